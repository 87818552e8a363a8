import { Fragment } from 'react';
import type { VmView } from '../../../src/api/schemas.js';
import { chainDiskPath, changedItems, copiesDisks, disksFollowChain, type Choices } from './state.js';

const COPY_LABEL = {
  auto: 'Automatic (resumable for disks of 1 GiB or more)',
  always: 'Resumable after a cut',
  never: 'Plain (not resumable)',
} as const;

const OPTION_LABEL = {
  single: "Move all the VM's data to a single location",
  items: "Move the VM's data to different locations",
  vmonly: 'Move only the virtual machine',
} as const;

export function StepSummary({ vm, choices: c, request }: { vm: VmView; choices: Choices; request: unknown }) {
  const items = changedItems(vm, c);
  // Disks that move with the checkpoint chain (their active layers are in its folder).
  const chainDisks = disksFollowChain(vm)
    ? vm.disks.map((d) => [d.path, chainDiskPath(vm, c, d.path)] as const).filter(([s, d]) => s !== d)
    : [];
  const running = vm.state === 'running' || vm.state === 'paused';
  const to = c.type === 'storage' ? vm.host : c.dest;
  let what: string;
  if (c.type === 'storage') {
    const live = running
      ? ' while the VM keeps running (writes go to both copies), then it switches to the new copies'
      : '';
    what = `The VM's files are copied to their new places on ${vm.host}${live}; the old files are deleted.`;
  } else if (c.option === 'vmonly') {
    const how = running ? "The VM's memory and device state are copied to" : 'The VM is registered on';
    const pause = running ? ' after a short pause at switch-over' : '';
    what = `${how} ${to}; its disks stay where they are. It then runs on ${to}${pause}.`;
  } else {
    const live = running
      ? ' while the VM keeps running, then its memory moves and it switches over with a short pause'
      : '';
    what =
      `The VM's disks, configuration and checkpoints are copied to ${to}${live}; ` +
      `the source copies are deleted once it is on ${to}.`;
  }
  return (
    <div data-testid="wizard-summary">
      <p>{what}</p>
      <dl className="facts">
        <dt>Virtual machine</dt>
        <dd>
          {vm.name} <span className="muted">({vm.state})</span>
        </dd>
        <dt>Move type</dt>
        <dd data-testid="summary-type">
          {c.type === 'storage' ? "Move the virtual machine's storage" : 'Move the virtual machine'}
        </dd>
        <dt>From</dt>
        <dd>{vm.host}</dd>
        <dt>To</dt>
        <dd data-testid="summary-destination">{to}</dd>
        <dt>Option</dt>
        <dd data-testid="summary-option">{c.option ? OPTION_LABEL[c.option] : '–'}</dd>
        {copiesDisks(vm, c) && (
          <>
            <dt>Disk copy</dt>
            <dd data-testid="summary-copy">{COPY_LABEL[c.resumable]}</dd>
          </>
        )}
        {c.option === 'single' && (
          <>
            <dt>Folder</dt>
            <dd className="path" data-testid="summary-path">
              {c.storagePath}
            </dd>
          </>
        )}
        {c.option === 'items' && (
          <>
            {Object.entries(items.vhd ?? {}).map(([s, d]) => (
              <Fragment key={s}>
                <dt>Disk</dt>
                <dd className="path">
                  {s} → {d}
                </dd>
              </Fragment>
            ))}
            {chainDisks.map(([s, d]) => (
              <Fragment key={s}>
                <dt>Disk</dt>
                <dd className="path" data-testid="summary-disk">
                  {s} → {d} <span className="muted">(with the checkpoints)</span>
                </dd>
              </Fragment>
            ))}
            {items.configPath && (
              <>
                <dt>Configuration</dt>
                <dd className="path" data-testid="summary-config">
                  {vm.configPath} → {items.configPath}
                </dd>
              </>
            )}
            {items.checkpointPath && (
              <>
                <dt>Checkpoints</dt>
                <dd className="path" data-testid="summary-checkpoint">
                  {vm.checkpointPath} → {items.checkpointPath}{' '}
                  <span className="muted">
                    ({vm.checkpoints.length} checkpoint{vm.checkpoints.length === 1 ? '' : 's'})
                  </span>
                </dd>
              </>
            )}
            {items.pagingPath && (
              <>
                <dt>Smart Paging</dt>
                <dd className="path" data-testid="summary-paging">
                  {vm.pagingPath} → {items.pagingPath}
                </dd>
              </>
            )}
            {!items.vhd && !items.configPath && !items.checkpointPath && !items.pagingPath && (
              <>
                <dt>Items</dt>
                <dd className="muted">
                  no new place given{c.type === 'vm' ? ` (the agent puts them in ${to}'s local pool)` : ''}
                </dd>
              </>
            )}
          </>
        )}
      </dl>
      <details>
        <summary className="small">Request</summary>
        <pre className="small">{JSON.stringify(request, null, 2)}</pre>
      </details>
    </div>
  );
}
