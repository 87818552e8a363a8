// A VM's screen (noVNC over the console's websocket, which relays the agent's VNC display),
// with Ctrl-Alt-Del and a PNG screenshot. When the connection ends without the user closing
// it (the VM moved, its host restarted), the VM is looked up on every host again and the
// screen reconnects to wherever it now runs.
import { useEffect, useRef, useState } from 'react';
import RFB from '@novnc/novnc';
import { actions } from '../../src/api/actions.js';
import type { VmView } from '../../src/api/schemas.js';
import { call, csrfToken, eachHost, session, ApiError } from './client.js';
import { useSession } from './session.js';

/** How long to keep looking for the VM after its screen closed (a move's switchover is seconds). */
const RELOCATE_MS = 120_000;
const RETRY_MS = 1000;

type ScreenState =
  | { kind: 'connecting'; host: string }
  | { kind: 'connected'; host: string }
  | { kind: 'reconnecting'; host: string }
  | { kind: 'ended'; host: string; why: string };

export function screenUrl(host: string, vm: string): string {
  const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
  const route = `/api/hosts/${encodeURIComponent(host)}/v1/vms/${encodeURIComponent(vm)}/vnc`;
  return `${scheme}://${window.location.host}${route}`;
}

export function ScreenView({ vm, onClose }: { vm: VmView; onClose: () => void }) {
  const { hosts } = useSession();
  const target = useRef<HTMLDivElement>(null);
  const rfb = useRef<RFB | null>(null);
  const [state, setState] = useState<ScreenState>({ kind: 'connecting', host: vm.host });
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const ac = new AbortController();
    let closedByUs = false;

    /** Where the VM runs now, or null when no host has it running (yet). */
    const locate = async (): Promise<string | null> => {
      const found = await eachHost(hosts, (h) => call(h.name, actions.vmList, {}, { signal: ac.signal }));
      for (const r of found) {
        const v = r.data?.find((x) => x.name === vm.name);
        if (v && (v.state === 'running' || v.state === 'paused')) return r.host.name;
      }
      return null;
    };

    const connect = (host: string): void => {
      if (ac.signal.aborted || !target.current) return;
      setState({ kind: 'connecting', host });
      const r = new RFB(target.current, screenUrl(host, vm.name), {
        wsProtocols: ['binary', `ferry-csrf.${csrfToken()}`],
      });
      r.scaleViewport = true;
      r.background = '#0f1721';
      r.addEventListener('connect', () => setState({ kind: 'connected', host }));
      r.addEventListener('disconnect', () => {
        if (rfb.current === r) rfb.current = null;
        if (!closedByUs) void relocate(host);
      });
      rfb.current = r;
    };

    const relocate = async (from: string): Promise<void> => {
      setState({ kind: 'reconnecting', host: from });
      const until = Date.now() + RELOCATE_MS;
      for (;;) {
        await new Promise((r) => setTimeout(r, RETRY_MS));
        if (ac.signal.aborted) return;
        if (Date.now() > until) break;
        try {
          await session(ac.signal); // a 401 here: the session ended, say so instead of retrying
          const host = await locate();
          if (host) {
            connect(host);
            return;
          }
        } catch (err) {
          if (err instanceof ApiError && err.status === 401) {
            setState({ kind: 'ended', host: from, why: 'Your session has ended; log in again.' });
            return;
          }
        }
      }
      setState({ kind: 'ended', host: from, why: `VM ${vm.name} is not running on any host.` });
    };

    connect(vm.host);
    return () => {
      closedByUs = true;
      ac.abort();
      rfb.current?.disconnect();
      rfb.current = null;
    };
  }, [vm.name, vm.host, hosts, attempt]);

  const screenshot = (): void => {
    rfb.current?.toBlob((blob) => {
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = `${vm.name}-${new Date().toISOString().replace(/[:.]/g, '-')}.png`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    }, 'image/png');
  };

  const connected = state.kind === 'connected';
  return (
    <div className="overlay" role="dialog" aria-modal="true" aria-labelledby="screen-title" data-testid="screen">
      <div className="screen card">
        <header className="wizard-head">
          <h2 id="screen-title">
            Screen of “{vm.name}”{' '}
            <span className="muted small" data-testid="screen-host">
              on {state.host}
            </span>
          </h2>
          <div className="screen-actions">
            <span className="muted small" data-testid="screen-state" data-state={state.kind}>
              {state.kind === 'ended' ? state.why : state.kind}
            </span>
            <button
              type="button"
              disabled={!connected}
              onClick={() => rfb.current?.sendCtrlAltDel()}
              data-testid="screen-cad"
            >
              Ctrl-Alt-Del
            </button>
            <button type="button" disabled={!connected} onClick={screenshot} data-testid="screen-shot">
              Screenshot
            </button>
            {state.kind === 'ended' && (
              <button type="button" onClick={() => setAttempt((n) => n + 1)} data-testid="screen-retry">
                Reconnect
              </button>
            )}
            <button type="button" className="secondary" onClick={onClose} data-testid="screen-close">
              Close
            </button>
          </div>
        </header>
        <div className="screen-body" ref={target} data-testid="screen-canvas" />
      </div>
    </div>
  );
}
