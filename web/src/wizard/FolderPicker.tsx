// Browses a host's storage pools (GET /v1/pools, GET /v1/pools/:name/browse) to pick a
// folder, optionally with a new folder name under it.
import { useState } from 'react';
import { actions } from '../../../src/api/actions.js';
import { call } from '../client.js';
import { bytes, joinPath } from '../format.js';
import { useLive } from '../useLive.js';
import { ErrorMessage } from '../ErrorMessage.js';

/** The pool holding ABS (longest root first) and the path inside it. */
function locate(
  pools: ReadonlyArray<{ name: string; path: string }>,
  abs: string,
): { pool: string; rel: string } | undefined {
  const root = (p: string): string => p.replace(/\/+$/, '');
  const hit = [...pools]
    .sort((a, b) => b.path.length - a.path.length)
    .find((p) => abs === root(p.path) || abs.startsWith(`${root(p.path)}/`));
  return hit ? { pool: hit.name, rel: abs.slice(root(hit.path).length).replace(/^\/+|\/+$/g, '') } : undefined;
}

/** Where the picker opens: START when it is inside a pool, else the first usable pool's root. */
function openAt(
  pools: ReadonlyArray<{ name: string; path: string; usable: boolean }> | undefined,
  start: string | undefined,
): { pool: string; rel: string } | undefined {
  if (!pools) return undefined;
  const at = start ? locate(pools, start.trim()) : undefined;
  if (at) return at;
  const first = pools.find((p) => p.usable) ?? pools[0];
  return first ? { pool: first.name, rel: '' } : undefined;
}

export function FolderPicker({
  host,
  onPick,
  title,
  start,
}: {
  host: string;
  onPick: (absPath: string) => void;
  title: string;
  start?: string;
}) {
  const pools = useLive((signal) => call(host, actions.poolList, {}, { signal }), host);
  // The user's choice; until then where the picker opens (openAt).
  const [chosen, setChosen] = useState<{ pool: string; rel: string } | null>(null);
  const [newFolder, setNewFolder] = useState('');
  // Where it opens is decided once: START as it was when the picker appeared (not each keystroke typed since).
  const [openStart] = useState(start);
  const opening = chosen === null;
  const sel = chosen ?? openAt(pools.data, openStart);
  const pool = sel?.pool ?? '';
  const want = sel?.rel ?? '';
  const listing = useLive(async (signal) => {
    if (!pool) return undefined;
    const browse = (rel: string) =>
      call(host, actions.poolBrowse, { params: { name: pool }, query: { path: rel } }, { signal });
    try {
      return { rel: want, view: await browse(want) };
    } catch (err) {
      // The starting folder may not exist yet (a new folder typed earlier): the pool's root.
      if (!opening || want === '') throw err;
      return { rel: '', view: await browse('') };
    }
  }, `${host}\n${pool}\n${want}`);
  const rel = chosen ? chosen.rel : (listing.data?.rel ?? want);
  const go = (to: string): void => setChosen({ pool, rel: to });

  const here = listing.data?.view.absolute;
  const target = here ? joinPath(here, newFolder) : undefined;

  return (
    <div className="picker" data-testid="folder-picker">
      <div className="picker-head">
        <strong>{title}</strong> <span className="muted small">on {host}</span>
      </div>
      <ErrorMessage error={pools.error} testid="picker-error" />
      <div className="row">
        <label htmlFor="picker-pool">Pool</label>
        <select
          id="picker-pool"
          value={pool}
          onChange={(e) => setChosen({ pool: e.target.value, rel: '' })}
          data-testid="picker-pool"
        >
          {(pools.data ?? []).map((p) => (
            <option key={p.name} value={p.name}>
              {p.name} ({p.kind}, {bytes(p.freeBytes)} free{p.usable ? '' : ', not usable by this host'})
            </option>
          ))}
        </select>
      </div>
      <div className="row">
        <button
          type="button"
          className="secondary small"
          disabled={!rel}
          onClick={() => go(rel.split('/').slice(0, -1).join('/'))}
          data-testid="picker-up"
        >
          ↑ Up
        </button>
        <code className="path" data-testid="picker-current">
          {here ?? '…'}
        </code>
      </div>
      <ErrorMessage error={listing.error} testid="picker-browse-error" />
      <ul className="entries" data-testid="picker-entries">
        {(listing.data?.view.entries ?? []).map((e) => (
          <li key={e.name}>
            {e.kind === 'dir' ? (
              <button
                type="button"
                className="link"
                onClick={() => go(rel ? `${rel}/${e.name}` : e.name)}
                data-testid={`picker-entry-${e.name}`}
              >
                📁 {e.name}
              </button>
            ) : (
              <span className="muted">
                📄 {e.name} <span className="small">({bytes(e.sizeBytes)})</span>
              </span>
            )}
          </li>
        ))}
        {listing.data && listing.data.view.entries.length === 0 && <li className="muted small">(empty folder)</li>}
      </ul>
      <div className="row">
        <label htmlFor="picker-new-folder">New folder</label>
        <input
          id="picker-new-folder"
          value={newFolder}
          placeholder="(optional) name of a new folder here"
          onChange={(e) => setNewFolder(e.target.value)}
          data-testid="picker-new-folder"
        />
        <button type="button" disabled={!target} onClick={() => target && onPick(target)} data-testid="picker-use">
          Use {newFolder.trim() ? 'new folder' : 'this folder'}
        </button>
      </div>
      {target && (
        <div className="muted small">
          Selects <code>{target}</code>
        </div>
      )}
    </div>
  );
}
