// Where the VM's files go: one folder, or a place per item: disks, configuration, checkpoints
// and the Smart Paging folder.
import { useState, type ReactNode } from 'react';
import type { VmView } from '../../../src/api/schemas.js';
import { basename, bytes, dirname, joinPath } from '../format.js';
import { FolderPicker } from './FolderPicker.js';
import { chainDiskPath, disksFollowChain, type Choices } from './state.js';

type Folder = 'configPath' | 'checkpointPath' | 'pagingPath';
type Target = { kind: 'disk'; src: string; index: number } | { kind: 'folder'; key: Folder };

const FOLDER_TITLE: Record<Folder, string> = {
  configPath: 'Folder for the configuration',
  checkpointPath: 'Folder for the checkpoints',
  pagingPath: 'Folder for the Smart Paging file',
};

/** One folder item's row: what it holds, a path input and Browse…. */
function FolderRow({
  name,
  testid,
  label,
  value,
  onChange,
  onBrowse,
  children,
}: {
  name: string;
  testid: string;
  label: string;
  value: string;
  onChange: (v: string) => void;
  onBrowse: () => void;
  children: ReactNode;
}) {
  return (
    <tr data-testid={`wizard-row-${testid}`}>
      <td>
        {name}
        {children}
      </td>
      <td>
        <input
          className="path-input"
          value={value}
          aria-label={label}
          onChange={(e) => onChange(e.target.value)}
          data-testid={`wizard-path-${testid}`}
        />
      </td>
      <td>
        <button type="button" className="secondary" onClick={onBrowse} data-testid={`wizard-browse-${testid}`}>
          Browse…
        </button>
      </td>
    </tr>
  );
}

export function StepLocations({
  vm,
  host,
  choices: c,
  update,
}: {
  vm: VmView;
  host: string;
  choices: Choices;
  update: (p: Partial<Choices>) => void;
}) {
  const [target, setTarget] = useState<Target | null>(null);

  if (c.option === 'single') {
    return (
      <div>
        <div className="field">
          <label htmlFor="wizard-path-storage">Folder for all of the VM's files on {host}</label>
          <input
            id="wizard-path-storage"
            className="path-input"
            value={c.storagePath}
            placeholder="/absolute/folder"
            onChange={(e) => update({ storagePath: e.target.value })}
            data-testid="wizard-path-storage"
          />
        </div>
        <FolderPicker
          host={host}
          title="Browse for a folder"
          start={c.storagePath}
          onPick={(p) => update({ storagePath: p })}
        />
      </div>
    );
  }

  const chained = disksFollowChain(vm);
  const ckBytes = vm.checkpoints.reduce((a, k) => a + k.sizeBytes, 0);
  const ckFiles = vm.checkpoints.reduce((a, k) => a + k.files.length, 0);
  const memory =
    vm.memoryBacking === 'paging-file'
      ? `its RAM is in the paging file ${vm.pagingFile ?? ''} now`
      : vm.memoryBacking === 'ram'
        ? 'its RAM is in ordinary memory now'
        : 'it is not running';

  const pick = (p: string): void => {
    if (!target) return;
    if (target.kind === 'folder') update({ [target.key]: p });
    else update({ vhd: { ...c.vhd, [target.src]: joinPath(p, basename(target.src)) } });
    setTarget(null);
  };

  return (
    <div>
      <p className="muted small">Change the places you want; items left as they are do not move.</p>
      <table className="table compact locations">
        <thead>
          <tr>
            <th>Item</th>
            <th>New location on {host}</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {vm.disks.map((d, i) => (
            <tr key={d.id}>
              <td>
                Disk {d.id}
                <div className="path small muted">
                  {d.path} ({d.format}, {bytes(d.virtualSizeBytes)})
                </div>
                {chained && (
                  <div className="small muted" data-testid={`wizard-disk-chained-${i}`}>
                    A layer of the checkpoint chain: it moves with the checkpoints.
                  </div>
                )}
              </td>
              <td>
                <input
                  className="path-input"
                  value={chained ? chainDiskPath(vm, c, d.path) : (c.vhd[d.path] ?? '')}
                  readOnly={chained}
                  aria-label={`New path of disk ${d.id}`}
                  onChange={(e) => update({ vhd: { ...c.vhd, [d.path]: e.target.value } })}
                  data-testid={`wizard-path-disk-${i}`}
                />
              </td>
              <td>
                {!chained && (
                  <button
                    type="button"
                    className="secondary"
                    onClick={() => setTarget({ kind: 'disk', src: d.path, index: i })}
                    data-testid={`wizard-browse-disk-${i}`}
                  >
                    Browse…
                  </button>
                )}
              </td>
            </tr>
          ))}
          <FolderRow
            name="Configuration"
            testid="config"
            label="New configuration folder"
            value={c.configPath}
            onChange={(v) => update({ configPath: v })}
            onBrowse={() => setTarget({ kind: 'folder', key: 'configPath' })}
          >
            <div className="path small muted">{vm.configPath}</div>
          </FolderRow>
          {vm.checkpointPath && (
            <FolderRow
              name="Checkpoints"
              testid="checkpoint"
              label="New checkpoint folder"
              value={c.checkpointPath}
              onChange={(v) => update({ checkpointPath: v })}
              onBrowse={() => setTarget({ kind: 'folder', key: 'checkpointPath' })}
            >
              <div className="path small muted">{vm.checkpointPath}</div>
              <div className="small muted" data-testid="wizard-checkpoint-info">
                {vm.checkpoints.length === 0
                  ? 'no checkpoints (the folder moves all the same)'
                  : `${vm.checkpoints.length} checkpoint${vm.checkpoints.length === 1 ? '' : 's'}, ` +
                    `${ckFiles} file${ckFiles === 1 ? '' : 's'}, ${bytes(ckBytes)}`}
              </div>
            </FolderRow>
          )}
          {vm.pagingPath && (
            <FolderRow
              name="Smart Paging"
              testid="paging"
              label="New Smart Paging folder"
              value={c.pagingPath}
              onChange={(v) => update({ pagingPath: v })}
              onBrowse={() => setTarget({ kind: 'folder', key: 'pagingPath' })}
            >
              <div className="path small muted">{vm.pagingPath}</div>
              <div className="small muted" data-testid="wizard-paging-info">
                {vm.smartPaging ? 'Smart Paging allowed' : 'Smart Paging not allowed'}; {memory}
              </div>
            </FolderRow>
          )}
        </tbody>
      </table>
      {target && (
        <FolderPicker
          key={target.kind === 'disk' ? target.src : target.key}
          host={host}
          onPick={pick}
          start={target.kind === 'folder' ? c[target.key] : dirname(c.vhd[target.src] ?? '')}
          title={target.kind === 'disk' ? `Folder for disk ${basename(target.src)}` : FOLDER_TITLE[target.key]}
        />
      )}
    </div>
  );
}
