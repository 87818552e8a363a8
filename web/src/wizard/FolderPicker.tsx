// Browses a host's storage pools (GET /v1/pools, GET /v1/pools/:name/browse) to pick a
// folder, optionally with a new folder name under it.
import { useEffect, useState } from 'react';
import { actions } from '../../../src/api/actions.js';
import { call } from '../client.js';
import { bytes, joinPath } from '../format.js';
import { usePoll } from '../usePoll.js';
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
  const pools = usePoll((signal) => call(host, actions.poolList, {}, { signal }), 0, [host]);
  const [pool, setPool] = useState('');
  const [rel, setRel] = useState('');
  const [fromStart, setFromStart] = useState(false);
  const [newFolder, setNewFolder] = useState('');

  // Open at START when it is inside a pool, else at the root of the first usable pool.
  useEffect(() => {
    if (pool || !pools.data?.length) return;
    const at = start ? locate(pools.data, start.trim()) : undefined;
    if (at) {
      setPool(at.pool);
      setRel(at.rel);
      setFromStart(at.rel !== '');
      return;
    }
    setPool((pools.data.find((p) => p.usable) ?? pools.data[0])!.name);
  }, [pools.data, pool, start]);

  const listing = usePoll(
    (signal) =>
      pool
        ? call(host, actions.poolBrowse, { params: { name: pool }, query: { path: rel } }, { signal })
        : Promise.resolve(undefined),
    0,
    [host, pool, rel],
  );

  // The starting folder may not exist yet (a new folder typed earlier): fall back to the pool's root.
  useEffect(() => {
    if (fromStart && listing.error) {
      setFromStart(false);
      setRel('');
    }
    if (fromStart && listing.data) setFromStart(false);
  }, [fromStart, listing.error, listing.data]);

  const here = listing.data?.absolute;
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
          onChange={(e) => {
            setPool(e.target.value);
            setRel('');
            setFromStart(false);
          }}
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
          onClick={() => {
            setFromStart(false);
            setRel(rel.split('/').slice(0, -1).join('/'));
          }}
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
        {(listing.data?.entries ?? []).map((e) => (
          <li key={e.name}>
            {e.kind === 'dir' ? (
              <button
                type="button"
                className="link"
                onClick={() => {
                  setFromStart(false);
                  setRel(rel ? `${rel}/${e.name}` : e.name);
                }}
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
        {listing.data && listing.data.entries.length === 0 && <li className="muted small">(empty folder)</li>}
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
