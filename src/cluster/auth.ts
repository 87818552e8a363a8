// etcd access control for a cluster (etcd's own RBAC; users named by the client certificate's
// CN, as etcd does with --client-cert-auth). Set up by the administrator's credential (`lab up
// --cluster`, `ferry cluster create|join`); agents never hold it.
//
//   user <admin CN>, user root   role root: everything, and the users and roles themselves
//   user <host>                  role ferry:<cluster>:host:<host>
//                                  read   the whole cluster (/ferry/clusters/<cluster>/)
//                                  write  members/<host>, nodes/<host>, queue/<host>/…
//                                + role ferry:<cluster>:leader when the admin lets it lead:
//                                  write  admit/, vms/, batches/, paused/, config, election/
//   leaders/<host>               written by the admin only: the host may lead (agents read it)
//
// A host can therefore never write another host's node, member or queue keys, nor delete
// another node's lease (etcd refuses a lease revoke unless the caller may write every key on
// the lease); only leader-eligible hosts can make cluster decisions.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import {
  Etcd3,
  EtcdRoleExistsError,
  EtcdRoleNotGrantedError,
  EtcdUserExistsError,
  Range,
  type IPermissionRequest,
} from 'etcd3';
import { FerryError, InvalidInputError, messageOf } from '../errors.js';
import { storeError } from './store.js';
import * as K from './keys.js';
import { sleep } from '../util/exec.js';

export interface AuthTls {
  ca: string;
  cert: string;
  key: string;
}

/** The prefix every key of cluster `name` lives under. */
export const clusterPrefix = (name: string): string => `/ferry/clusters/${name}/`;

export const hostRole = (cluster: string, host: string): string => `ferry:${cluster}:host:${host}`;
export const leaderRole = (cluster: string): string => `ferry:${cluster}:leader`;

/** The CN of a certificate file: etcd's user name for whoever presents it. */
export async function commonName(certFile: string): Promise<string> {
  const cert = new crypto.X509Certificate(await fsp.readFile(certFile));
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
  if (!cn)
    throw new InvalidInputError(`Cannot use certificate ${certFile} with etcd: it has no CN (etcd's user name)`, {
      cert: certFile,
    });
  return cn;
}

async function connectAdmin(endpoints: string[], tls: AuthTls): Promise<Etcd3> {
  try {
    const credentials = {
      rootCertificate: await fsp.readFile(tls.ca),
      certChain: await fsp.readFile(tls.cert),
      privateKey: await fsp.readFile(tls.key),
    };
    return new Etcd3({
      hosts: endpoints,
      credentials,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 5000 }),
    });
  } catch (err) {
    throw new FerryError(
      'E_STORE_TLS',
      `Cannot set up etcd access control: cannot read the admin's TLS files (${messageOf(err)}); ` +
        'check the context or lab folder',
      { cause: err },
    );
  }
}

/**
 * etcd's ErrAuthOldRevision: another change of the access rules was applied between the check
 * of a request and its application (several hosts are let in at once). etcd's own Go client
 * retries it; etcd3 has no error class for it, so it is known by etcd's fixed error text.
 */
const AUTH_OLD_REVISION = 'etcdserver: revision of auth store is old';

/**
 * Runs `fn` with an admin connection; etcd errors become E_STORE_* errors saying what was
 * being done. Every `fn` here is idempotent, so a request that met a newer access rule is
 * run again.
 */
async function asAdmin<T>(what: string, endpoints: string[], tls: AuthTls, fn: (c: Etcd3) => Promise<T>): Promise<T> {
  const client = await connectAdmin(endpoints, tls);
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn(client);
      } catch (err) {
        if (attempt >= 5 || !messageOf(err).includes(AUTH_OLD_REVISION)) throw err;
        await sleep(100 * attempt);
      }
    }
  } catch (err) {
    throw storeError(what, err, { endpoints });
  } finally {
    client.close();
  }
}

async function ignore(p: Promise<unknown>, ...kinds: Array<new (...a: never[]) => Error>): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!kinds.some((k) => err instanceof k)) throw err;
  }
}

/** Creates the user unless it exists, with these roles; true when it was created. */
async function ensureUser(c: Etcd3, name: string, roles: string[]): Promise<boolean> {
  let created = true;
  try {
    await c.auth.userAdd({ name, options: { no_password: true } });
  } catch (err) {
    if (!(err instanceof EtcdUserExistsError)) throw err;
    created = false;
  }
  for (const role of roles) await c.user(name).addRole(role);
  return created;
}

async function ensureRole(c: Etcd3, name: string, perms: IPermissionRequest[]): Promise<void> {
  await ignore(c.role(name).create(), EtcdRoleExistsError);
  if (perms.length) await c.role(name).grant(perms);
}

/**
 * Turns etcd's access control on (once; later calls change nothing): the root user and the
 * admin certificate's user get the root role. From then on every request is checked.
 */
export async function enableAuth(endpoints: string[], admin: AuthTls): Promise<{ admin: string }> {
  const adminUser = await commonName(admin.cert);
  await asAdmin('turn on etcd access control', endpoints, admin, async (c) => {
    await ensureRole(c, 'root', []);
    await ensureUser(c, 'root', ['root']);
    await ensureUser(c, adminUser, ['root']);
    await c.auth.authEnable();
  });
  return { admin: adminUser };
}

/**
 * Lets `host` into cluster `cluster` (its etcd user and role), and lets it lead or not
 * (`lead` undefined: as it is, and yes for a new host). Taking leadership away also ends the
 * host's current leadership (its election key is deleted).
 */
export async function grantHost(
  endpoints: string[],
  admin: AuthTls,
  o: { cluster: string; host: string; lead?: boolean },
): Promise<void> {
  if (o.host === 'root' || o.host === (await commonName(admin.cert)))
    throw new InvalidInputError(
      `Cannot let host '${o.host}' into cluster '${o.cluster}': the name is the etcd user of the administrator`,
      { host: o.host },
    );
  const p = clusterPrefix(o.cluster);
  const key = (k: string): IPermissionRequest => ({ permission: 'Readwrite', key: `${p}${k}` });
  const prefix = (k: string): IPermissionRequest => ({ permission: 'Readwrite', range: Range.prefix(`${p}${k}`) });
  await asAdmin(`let host '${o.host}' into cluster '${o.cluster}'`, endpoints, admin, async (c) => {
    await ensureRole(c, hostRole(o.cluster, o.host), [
      { permission: 'Read', range: Range.prefix(p) },
      key(K.members.key(o.host)),
      key(K.nodes.key(o.host)),
      prefix(K.queue.of(o.host)),
    ]);
    await ensureRole(c, leaderRole(o.cluster), [
      prefix(K.admits.prefix),
      prefix(K.vms.prefix),
      prefix(K.batches.prefix),
      prefix(K.paused.prefix),
      prefix(K.election.prefix),
      key(K.config.key),
    ]);
    const created = await ensureUser(c, o.host, [hostRole(o.cluster, o.host)]);
    const ns = c.namespace(p);
    if (o.lead === undefined && !created) return;
    if (o.lead ?? true) {
      await c.user(o.host).addRole(leaderRole(o.cluster));
      await ns.put(K.leaders.key(o.host)).value(K.leaders.encode({ at: new Date().toISOString() }));
    } else {
      await ignore(c.user(o.host).removeRole(leaderRole(o.cluster)), EtcdRoleNotGrantedError);
      await ns.delete().key(K.leaders.key(o.host));
      // Its leadership ends now, not when it next fails to write.
      const held = await ns.getAll().prefix(`${K.election.prefix}${K.election.name}/`).strings();
      for (const [k, v] of Object.entries(held)) if (v === o.host) await ns.delete().key(k);
    }
  });
}

/**
 * `ferry cluster create|join`, the administrator's side, before the host's agent joins: the
 * endpoints are https, the cluster exists (join) or not (create), then etcd's access control
 * is on and the host has its user and role. A refusal changes nothing.
 */
export async function prepareJoin(
  endpoints: string[],
  admin: AuthTls,
  o: { cluster: string; host: string; create: boolean; lead?: boolean },
): Promise<void> {
  const verb = o.create ? 'create' : 'join';
  for (const e of endpoints)
    if (!/^https:\/\/[^/\s]+:\d+\/?$/.test(e))
      throw new InvalidInputError(
        `Cannot ${verb} cluster '${o.cluster}': etcd endpoint '${e}' is not https://HOST:PORT`,
        {
          endpoint: e,
        },
      );
  const members = await asAdmin(`${verb} cluster '${o.cluster}'`, endpoints, admin, async (c) =>
    Object.keys(await c.namespace(clusterPrefix(o.cluster)).getAll().prefix(K.members.prefix).strings()),
  ).catch((err: unknown) => {
    throw new FerryError(
      'E_CLUSTER_UNAVAILABLE',
      `Cannot ${verb} cluster '${o.cluster}': etcd does not answer at ${endpoints.join(', ')} (${messageOf(err)}); ` +
        'start etcd with certificates of this domain and check the URLs',
      { cause: err },
    );
  });
  const again = members.includes(K.members.key(o.host)); // the host is in it already: nothing to refuse
  if (o.create && members.length && !again)
    throw new FerryError(
      'E_CLUSTER_EXISTS',
      `Cannot create cluster '${o.cluster}': it exists (${members.length} members); ` +
        `join it with 'ferry cluster join ${o.cluster}'`,
      {},
    );
  if (!o.create && !members.length)
    throw new FerryError(
      'E_CLUSTER_NOT_FOUND',
      `Cannot join cluster '${o.cluster}': it has no members at ${endpoints.join(', ')}; ` +
        `create it first with 'ferry cluster create ${o.cluster}'`,
      {},
    );
  await enableAuth(endpoints, admin);
  await grantHost(endpoints, admin, o);
}
