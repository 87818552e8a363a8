// The lab's file (DIR/lab.json) and where its credentials and agents are: all a command
// needs to talk to a lab. Kept apart from lab.ts (which starts agents and etcd) so that a
// command such as `ferry vm list --lab DIR` loads no etcd, QEMU or process code.
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { NotFoundError } from '../errors.js';
import type { Credentials } from '../api/client.js';

const LabHost = z.object({
  name: z.string(),
  port: z.number().int(),
  dataDir: z.string(),
  agentPid: z.number().int().nullable(),
  // --netns: the host's namespace, management and migration addresses.
  netns: z.string().optional(),
  address: z.string().optional(),
  migrationAddress: z.string().optional(),
  // --package: the host runs the unpacked .deb in its own namespaces (package-host.ts).
  packaged: z.boolean().optional(),
});
export const LabFile = z.object({
  version: z.literal(1),
  dir: z.string(),
  hosts: z.array(LabHost),
  cluster: z.boolean().default(false),
  netns: z.object({ id: z.string(), subnet: z.number().int() }).nullable().default(null),
  /** --package: the .deb the hosts run (unpacked in DIR/package). */
  package: z.object({ deb: z.string(), sha256: z.string() }).nullable().default(null),
});
export type LabFile = z.infer<typeof LabFile>;

export const labFile = (dir: string): string => path.join(dir, 'lab.json');

export async function readLab(dir: string): Promise<LabFile> {
  let text: string;
  try {
    text = await fsp.readFile(labFile(dir), 'utf8');
  } catch {
    throw new NotFoundError(
      'E_LAB_NOT_FOUND',
      `Cannot find a lab in ${dir}: there is no lab.json; create one with 'ferry lab up --dir ${dir}'`,
      { dir },
    );
  }
  return LabFile.parse(JSON.parse(text), { jitless: true }); // read once: compiling a fast check costs more
}

export function labCredentials(dir: string): Credentials {
  const d = path.join(dir, 'domain');
  return {
    ca: path.join(d, 'ca.crt'),
    cert: path.join(d, 'admins', 'admin.crt'),
    key: path.join(d, 'admins', 'admin.key'),
  };
}

export function labEndpoint(h: { port: number; address?: string | undefined }): string {
  return `https://${h.address ?? '127.0.0.1'}:${h.port}`;
}
