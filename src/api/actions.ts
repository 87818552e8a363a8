// Every action of the agent's API. Admins may call all of them; hosts only those that
// list 'host' (what a peer needs during a migration, and what the cluster's leader needs to
// run drains and fail-backs: list VMs, compare, start, follow and cancel moves).
import { z } from 'zod';
import { action } from './action.js';
import {
  AddVmBody, BatchView, ClusterJoinBody, ClusterView, ConsoleQuery, DrainBody, DrainResult, LimitsBody, ResumeBody, HostSetBody, PoolAddBody, PoolBrowseQuery, PoolBrowseView, HostView, NameParams, Ok, PoolGrantBody, PoolView, SwitchCreateBody, SwitchView,
  VmCreateBody, VmRemoveQuery, VmStopBody, VmView, Name,
} from './schemas.js';
import { CompareReport, CompareRequest, IdParams, ListQuery, MigrationRecord, MoveRequest, StorageMoveRequest } from '../migration/schemas.js';

const admin = ['admin'] as const;
const peer = ['admin', 'host'] as const;

export const actions = {
  hostShow: action({ name: 'host.show', method: 'GET', path: '/v1/host', summary: 'Host capabilities, limits, pools, switches', response: HostView, roles: peer }),
  hostSet: action({ name: 'host.set', method: 'PATCH', path: '/v1/host', summary: 'Change migration settings', body: HostSetBody, response: HostView, roles: admin }),

  vmList: action({ name: 'vm.list', method: 'GET', path: '/v1/vms', summary: 'VMs on this host', response: z.array(VmView), roles: peer }),
  vmCreate: action({ name: 'vm.create', method: 'POST', path: '/v1/vms', summary: 'Create a VM (optionally start it)', body: VmCreateBody, response: VmView, roles: admin }),
  vmShow: action({ name: 'vm.show', method: 'GET', path: '/v1/vms/:name', summary: 'One VM', params: NameParams, response: VmView, roles: admin }),
  vmStart: action({ name: 'vm.start', method: 'POST', path: '/v1/vms/:name/start', summary: 'Start a stopped VM', params: NameParams, response: VmView, roles: admin }),
  vmStop: action({ name: 'vm.stop', method: 'POST', path: '/v1/vms/:name/stop', summary: 'Shut down (ACPI, then forced after the timeout) or power off (force)', params: NameParams, body: VmStopBody, response: VmView, roles: admin }),
  vmPause: action({ name: 'vm.pause', method: 'POST', path: '/v1/vms/:name/pause', summary: 'Pause the vCPUs', params: NameParams, response: VmView, roles: admin }),
  vmResume: action({ name: 'vm.resume', method: 'POST', path: '/v1/vms/:name/resume', summary: 'Resume the vCPUs', params: NameParams, response: VmView, roles: admin }),
  vmRemove: action({ name: 'vm.remove', method: 'DELETE', path: '/v1/vms/:name', summary: 'Remove a stopped VM (and its disks unless deleteDisks=false)', params: NameParams, query: VmRemoveQuery, response: Ok, roles: admin }),
  vmConsole: action({ name: 'vm.console', method: 'GET', path: '/v1/vms/:name/console', summary: "The guest's serial output (text; follow=true streams)", params: NameParams, query: ConsoleQuery, response: z.string(), roles: admin }),

  switchList: action({ name: 'switch.list', method: 'GET', path: '/v1/switches', summary: 'Virtual switches', response: z.array(SwitchView), roles: peer }),
  switchCreate: action({ name: 'switch.create', method: 'POST', path: '/v1/switches', summary: 'Create a switch', body: SwitchCreateBody, response: SwitchView, roles: admin }),
  switchRemove: action({ name: 'switch.remove', method: 'DELETE', path: '/v1/switches/:name', summary: 'Remove a switch no VM uses', params: NameParams, response: Ok, roles: admin }),

  poolList: action({ name: 'pool.list', method: 'GET', path: '/v1/pools', summary: 'Storage pools', response: z.array(PoolView), roles: peer }),
  poolBrowse: action({ name: 'pool.browse', method: 'GET', path: '/v1/pools/:name/browse', summary: 'Folders and files inside a pool (path relative to the pool)', params: NameParams, query: PoolBrowseQuery, response: PoolBrowseView, roles: admin }),
  poolAdd: action({ name: 'pool.add', method: 'POST', path: '/v1/pools', summary: 'Add a storage pool (a folder; shared pools are mounted on every host)', body: PoolAddBody, response: PoolView, roles: admin }),
  poolGrant: action({ name: 'pool.grant', method: 'POST', path: '/v1/pools/:name/grant', summary: 'Grant a host access to a shared pool', params: NameParams, body: PoolGrantBody, response: PoolView, roles: admin }),
  poolRevoke: action({ name: 'pool.revoke', method: 'POST', path: '/v1/pools/:name/revoke', summary: "Revoke a host's access to a shared pool", params: NameParams, body: PoolGrantBody, response: PoolView, roles: admin }),

  clusterStatus: action({ name: 'cluster.status', method: 'GET', path: '/v1/cluster', summary: "The cluster this host belongs to: nodes, clustered VMs, queue, drains", response: ClusterView, roles: ['admin', 'host'] }),
  clusterDrain: action({ name: 'cluster.drain', method: 'POST', path: '/v1/cluster/nodes/:name/drain', summary: 'Plan (dryRun) or start moving every VM off a node, then keep it paused', params: NameParams, body: DrainBody, response: DrainResult, roles: admin }),
  clusterResume: action({ name: 'cluster.resume', method: 'POST', path: '/v1/cluster/nodes/:name/resume', summary: "Un-pause a node (stops its drain's queued moves); failback brings its VMs back", params: NameParams, body: ResumeBody, response: z.object({ batch: BatchView.nullable() }), roles: admin }),
  clusterAddVm: action({ name: 'cluster.add-vm', method: 'POST', path: '/v1/cluster/vms', summary: 'Make a VM of this host clustered (HA), or change its priority, preferred owners, anti-affinity', body: AddVmBody, response: VmView, roles: admin }),
  clusterRemoveVm: action({ name: 'cluster.remove-vm', method: 'DELETE', path: '/v1/cluster/vms/:name', summary: 'Take a VM of this host out of the cluster (it keeps running here)', params: NameParams, response: VmView, roles: admin }),
  clusterLimits: action({ name: 'cluster.limits', method: 'PATCH', path: '/v1/cluster/limits', summary: 'Limits of the cluster queue: moves per node (out, in) and in the cluster', body: LimitsBody, response: ClusterView.shape.limits, roles: admin }),
  clusterJoin: action({ name: 'cluster.join', method: 'PUT', path: '/v1/cluster', summary: "Join this host to a cluster (etcd endpoints; TLS by the domain's CA)", body: ClusterJoinBody, response: ClusterView, roles: admin }),
  compare: action({ name: 'migration.compare', method: 'POST', path: '/v1/compare', summary: 'Can this VM move there? (Compare-VM)', body: CompareRequest, response: CompareReport, roles: peer }),
  migrationCreate: action({ name: 'migration.create', method: 'POST', path: '/v1/migrations', summary: 'Move a VM to another host (queued when the host is at its limit)', body: MoveRequest, response: MigrationRecord, roles: peer }),
  storageMove: action({ name: 'migration.storage', method: 'POST', path: '/v1/storage-moves', summary: "Move a VM's storage on its host (running or stopped)", body: StorageMoveRequest, response: MigrationRecord, roles: admin }),
  migrationList: action({ name: 'migration.list', method: 'GET', path: '/v1/migrations', summary: 'Active and queued migrations (all=true: history too)', query: ListQuery, response: z.array(MigrationRecord), roles: admin }),
  migrationShow: action({ name: 'migration.show', method: 'GET', path: '/v1/migrations/:id', summary: 'One migration', params: IdParams, response: MigrationRecord, roles: peer }),
  migrationCancel: action({ name: 'migration.cancel', method: 'POST', path: '/v1/migrations/:id/cancel', summary: 'Cancel a queued or running migration before switch-over', params: IdParams, response: MigrationRecord, roles: peer }),
} as const;

export type Actions = typeof actions;
export { Name };
