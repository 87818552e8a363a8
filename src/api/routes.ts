// Every action's route (method, path, body type) without its zod schemas: what the CLI's
// client needs to call it. The client sends and receives JSON and the agent checks both, so
// the CLI need not build the API's ~45 schemas at start-up (~40 ms of CPU per command, issue
// 17). test/unit/api-routes.test.ts checks that this table is the actions' own.
import type { actions } from './actions.js';

type Route = {
  method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  path: string;
  contentType?: 'application/x-pem-file';
};

export const routes = {
  hostShow: { method: 'GET', path: '/v1/host' },
  domainTls: { method: 'GET', path: '/v1/domain/tls' },
  domainCrlPut: { method: 'PUT', path: '/v1/domain/crl', contentType: 'application/x-pem-file' },
  domainRenewal: { method: 'POST', path: '/v1/domain/renewal' },
  domainCertificatePut: { method: 'PUT', path: '/v1/domain/certificate', contentType: 'application/x-pem-file' },
  hostSet: { method: 'PATCH', path: '/v1/host' },
  vmList: { method: 'GET', path: '/v1/vms' },
  vmCreate: { method: 'POST', path: '/v1/vms' },
  vmImport: { method: 'POST', path: '/v1/vms/import' },
  vmShow: { method: 'GET', path: '/v1/vms/:name' },
  vmStart: { method: 'POST', path: '/v1/vms/:name/start' },
  vmStop: { method: 'POST', path: '/v1/vms/:name/stop' },
  vmPause: { method: 'POST', path: '/v1/vms/:name/pause' },
  vmSet: { method: 'PATCH', path: '/v1/vms/:name' },
  vmResume: { method: 'POST', path: '/v1/vms/:name/resume' },
  vmRemove: { method: 'DELETE', path: '/v1/vms/:name' },
  checkpointList: { method: 'GET', path: '/v1/vms/:name/checkpoints' },
  checkpointNew: { method: 'POST', path: '/v1/vms/:name/checkpoints' },
  checkpointApply: { method: 'POST', path: '/v1/vms/:name/checkpoints/:checkpoint/apply' },
  checkpointRemove: { method: 'DELETE', path: '/v1/vms/:name/checkpoints/:checkpoint' },
  vmConsole: { method: 'GET', path: '/v1/vms/:name/console' },
  vmScreenshot: { method: 'GET', path: '/v1/vms/:name/screenshot' },
  switchList: { method: 'GET', path: '/v1/switches' },
  switchCreate: { method: 'POST', path: '/v1/switches' },
  switchRemove: { method: 'DELETE', path: '/v1/switches/:name' },
  poolList: { method: 'GET', path: '/v1/pools' },
  poolBrowse: { method: 'GET', path: '/v1/pools/:name/browse' },
  poolAdd: { method: 'POST', path: '/v1/pools' },
  poolGrant: { method: 'POST', path: '/v1/pools/:name/grant' },
  poolRevoke: { method: 'POST', path: '/v1/pools/:name/revoke' },
  clusterStatus: { method: 'GET', path: '/v1/cluster' },
  clusterDrain: { method: 'POST', path: '/v1/cluster/nodes/:name/drain' },
  clusterPause: { method: 'POST', path: '/v1/cluster/nodes/:name/pause' },
  clusterResume: { method: 'POST', path: '/v1/cluster/nodes/:name/resume' },
  clusterAddVm: { method: 'POST', path: '/v1/cluster/vms' },
  clusterRemoveVm: { method: 'DELETE', path: '/v1/cluster/vms/:name' },
  clusterLimits: { method: 'PATCH', path: '/v1/cluster/limits' },
  clusterJoin: { method: 'PUT', path: '/v1/cluster' },
  compare: { method: 'POST', path: '/v1/compare' },
  migrationCreate: { method: 'POST', path: '/v1/migrations' },
  storageMove: { method: 'POST', path: '/v1/storage-moves' },
  migrationList: { method: 'GET', path: '/v1/migrations' },
  migrationShow: { method: 'GET', path: '/v1/migrations/:id' },
  migrationCancel: { method: 'POST', path: '/v1/migrations/:id/cancel' },
  auditList: { method: 'GET', path: '/v1/audit' },
} as const satisfies Record<keyof typeof actions, Route>;
