// Sends Prepare: the request's JSON with the VM folder's files as bytes after it
// (api/incoming-body.ts). A destination of an older version answers 415 to that content type:
// it gets the same request as JSON, its files as base64.
import type { z } from 'zod';
import type { AgentClient } from '../api/client.js';
import { actionUrl } from '../api/action.js';
import { INCOMING_CONTENT_TYPE, encodeIncoming } from '../api/incoming-body.js';
import { peerActions, type IncomingRequest, type IncomingView } from '../api/peer-actions.js';
import { FerryError } from '../errors.js';

type IncomingRequestInput = z.input<typeof IncomingRequest>;
type Client = Pick<AgentClient, 'call' | 'request'>;

/** `files`: the bytes of the files `body.storage.files` names (by `size`), in that order. */
export async function sendPrepare(
  client: Client,
  body: IncomingRequestInput,
  files: readonly Buffer[] | undefined,
  opts: { signal: AbortSignal; timeoutMs: number },
): Promise<IncomingView> {
  if (!body.storage) return client.call(peerActions.prepare, { body }, opts);
  const bytes = encodeIncoming(body, files ?? []);
  try {
    const url = actionUrl(peerActions.prepare);
    return (await client.request('POST', url, bytes, { ...opts, contentType: INCOMING_CONTENT_TYPE })) as IncomingView;
  } catch (err) {
    if (!(err instanceof FerryError) || err.context.status !== 415) throw err;
  }
  return client.call(peerActions.prepare, { body: withBase64(body, files ?? []) }, opts);
}

/** The request as an older destination reads it: each file's bytes inside the JSON. */
export function withBase64(body: IncomingRequestInput, files: readonly Buffer[]): IncomingRequestInput {
  const st = body.storage;
  if (!st) return body;
  return {
    ...body,
    storage: {
      ...st,
      files: st.files.map((f, i) => ({ path: f.path, base64: (files[i] ?? Buffer.alloc(0)).toString('base64') })),
    },
  };
}
