// Where the VM's files go: one folder, or a place per disk and for the configuration.
import { useState } from 'react';
import type { VmView } from '../../../src/api/schemas.js';
import { basename, bytes, dirname, joinPath } from '../format.js';
import { FolderPicker } from './FolderPicker.js';
import type { Choices } from './state.js';

type Target = { kind: 'disk'; src: string; index: number } | { kind: 'config' };

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

  const pick = (p: string): void => {
    if (!target) return;
    if (target.kind === 'config') update({ configPath: p });
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
              </td>
              <td>
                <input
                  className="path-input"
                  value={c.vhd[d.path] ?? ''}
                  aria-label={`New path of disk ${d.id}`}
                  onChange={(e) => update({ vhd: { ...c.vhd, [d.path]: e.target.value } })}
                  data-testid={`wizard-path-disk-${i}`}
                />
              </td>
              <td>
                <button
                  type="button"
                  className="secondary"
                  onClick={() => setTarget({ kind: 'disk', src: d.path, index: i })}
                  data-testid={`wizard-browse-disk-${i}`}
                >
                  Browse…
                </button>
              </td>
            </tr>
          ))}
          <tr>
            <td>
              Configuration<div className="path small muted">{vm.configPath}</div>
            </td>
            <td>
              <input
                className="path-input"
                value={c.configPath}
                aria-label="New configuration folder"
                onChange={(e) => update({ configPath: e.target.value })}
                data-testid="wizard-path-config"
              />
            </td>
            <td>
              <button
                type="button"
                className="secondary"
                onClick={() => setTarget({ kind: 'config' })}
                data-testid="wizard-browse-config"
              >
                Browse…
              </button>
            </td>
          </tr>
        </tbody>
      </table>
      {target && (
        <FolderPicker
          key={target.kind === 'disk' ? target.src : 'config'}
          host={host}
          onPick={pick}
          start={target.kind === 'config' ? c.configPath : dirname(c.vhd[target.src] ?? '')}
          title={target.kind === 'disk' ? `Folder for disk ${basename(target.src)}` : 'Folder for the configuration'}
        />
      )}
    </div>
  );
}
