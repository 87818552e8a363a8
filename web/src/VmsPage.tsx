import { lazy, Suspense, useState } from 'react';
import { actions } from '../../src/api/actions.js';
import type { VmView } from '../../src/api/schemas.js';
import { call, eachHost } from './client.js';
import { bytes, mib } from './format.js';
import { useCan, useSession } from './session.js';
import { useLive } from './useLive.js';
import { changesVms } from './liveRules.js';
import { ErrorMessage } from './ErrorMessage.js';
import { MoveWizard } from './wizard/MoveWizard.js';

// noVNC is loaded with the first screen opened, not with every page.
const ScreenView = lazy(() => import('./ScreenView.js').then((m) => ({ default: m.ScreenView })));

export function VmsPage() {
  const { hosts } = useSession();
  const can = useCan();
  const mayMove = can(actions.migrationCreate) || can(actions.storageMove);
  const [moving, setMoving] = useState<VmView | null>(null);
  const [watching, setWatching] = useState<VmView | null>(null);
  // The live screen needs what a screenshot needs (the console server checks the same role).
  const mayWatch = can(actions.vmScreenshot);
  const names = hosts.map((h) => h.name);
  const live = useLive(
    (signal) => eachHost(hosts, (h) => call(h.name, actions.vmList, {}, { signal })),
    names.join(),
    names,
    (_h, e) => (changesVms(e) ? 'reload' : null),
  );
  const vms = (live.data ?? []).flatMap((r) => r.data ?? []).sort((a, b) => a.name.localeCompare(b.name));
  const failed = (live.data ?? []).filter((r) => r.error);

  return (
    <section>
      <h2>Virtual machines</h2>
      {failed.map((r) => (
        <div key={r.host.name} className="warning" data-testid={`vms-host-error-${r.host.name}`}>
          Host {r.host.name}: <ErrorMessage error={r.error} />
        </div>
      ))}
      {!live.data && live.loading && <p className="muted">Loading…</p>}
      {live.data && vms.length === 0 && (
        <p className="muted" data-testid="vms-empty">
          No virtual machines on any host.
        </p>
      )}
      {vms.length > 0 && (
        <table className="table" data-testid="vm-table">
          <thead>
            <tr>
              <th>Name</th>
              <th>Host</th>
              <th>State</th>
              <th>Memory</th>
              <th>CPUs</th>
              <th>Disks</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {vms.map((vm) => (
              <tr key={`${vm.host}/${vm.name}`} data-testid={`vm-row-${vm.name}`}>
                <td className="strong">{vm.name}</td>
                <td data-testid={`vm-host-${vm.name}`}>{vm.host}</td>
                <td>
                  <span className={`badge state-${vm.state}`} data-testid={`vm-state-${vm.name}`}>
                    {vm.state}
                  </span>
                  {vm.memoryBacking === 'paging-file' && (
                    // Its RAM is a file in its paging folder (Smart Paging), not ordinary memory.
                    <span
                      className="badge paging"
                      title={`RAM backed by ${vm.pagingFile ?? 'a file in the Smart Paging folder'}`}
                      data-testid={`vm-paging-${vm.name}`}
                    >
                      Smart Paging
                    </span>
                  )}
                  {vm.arrival?.trouble && (
                    // The guest restarted, panicked or powered off by itself right after a move.
                    <span className="badge trouble" title={vm.arrival.message} data-testid={`vm-trouble-${vm.name}`}>
                      {vm.arrival.trouble.what === 'reset'
                        ? 'restarted after move'
                        : vm.arrival.trouble.what === 'panic'
                          ? 'panicked after move'
                          : 'powered off after move'}
                    </span>
                  )}
                </td>
                <td>{mib(vm.memoryMiB)}</td>
                <td>{vm.cpus}</td>
                <td>
                  {vm.disks.length === 0 && <span className="muted">none</span>}
                  {vm.disks.map((d) => (
                    <div key={d.id} className="path small" title={d.path}>
                      {d.path}{' '}
                      <span className="muted">
                        ({d.format}, {bytes(d.virtualSizeBytes)})
                      </span>
                    </div>
                  ))}
                  {vm.checkpoints.length > 0 && (
                    <div className="small muted" data-testid={`vm-checkpoints-${vm.name}`}>
                      {vm.checkpoints.length} checkpoint{vm.checkpoints.length === 1 ? '' : 's'}
                    </div>
                  )}
                </td>
                <td className="row-actions">
                  {mayWatch && vm.display === 'vga' && (vm.state === 'running' || vm.state === 'paused') && (
                    <button type="button" onClick={() => setWatching(vm)} data-testid={`screen-${vm.name}`}>
                      Screen
                    </button>
                  )}
                  {mayMove && (
                    <button type="button" onClick={() => setMoving(vm)} data-testid={`move-${vm.name}`}>
                      Move…
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {watching && (
        <Suspense fallback={<p className="muted">Loading the screen…</p>}>
          <ScreenView vm={watching} onClose={() => setWatching(null)} />
        </Suspense>
      )}
      {moving && (
        <MoveWizard
          vm={moving}
          onClose={() => {
            setMoving(null);
            live.refresh();
          }}
        />
      )}
    </section>
  );
}
