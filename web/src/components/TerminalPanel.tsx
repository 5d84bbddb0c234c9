// The terminal tab: a sandbox's terminal sessions as tabs of their own.
// Every session's terminal stays mounted; the ones not shown are hidden with
// CSS, so their sockets, screens and scrollback carry on in the background.
import { useEffect, useLayoutEffect, useReducer, useRef, useState } from 'react';
import type { Sandbox } from '../api';
import {
  closeSession,
  newSession,
  sessionsOf,
  subscribeSessions,
  type SessionState,
  type TerminalSession,
} from '../terminal/session';

const STATE_TEXT: Record<SessionState, string> = {
  idle: 'waiting',
  connecting: 'connecting',
  open: 'connected',
  reconnecting: 'reconnecting',
  dropped: 'disconnected',
  exited: 'ended',
};

export function TerminalPanel({ sandbox, visible }: { sandbox: Sandbox; visible: boolean }) {
  const [, rerender] = useReducer((x: number) => x + 1, 0);
  const sessions = sessionsOf(sandbox.id);
  const [activeKey, setActiveKey] = useState<number | null>(sessions[0]?.key ?? null);
  const opened = useRef(false);

  useEffect(() => subscribeSessions(rerender), []);
  // Each session's state changes (connected, dropped, ended) redraw the tabs.
  useEffect(() => {
    const offs = sessions.map((s) => s.subscribe(rerender));
    return () => offs.forEach((off) => off());
  }, [sessions.map((s) => s.key).join(',')]); // eslint-disable-line react-hooks/exhaustive-deps

  // The first visit opens a shell when there is none yet.
  useEffect(() => {
    if (!visible || opened.current) return;
    opened.current = true;
    if (sessionsOf(sandbox.id).length === 0 && sandbox.state === 'running') {
      setActiveKey(newSession(sandbox.id).key);
    }
  }, [visible, sandbox.id, sandbox.state]);

  // When a paused sandbox runs again, sessions that lost their socket
  // reattach by themselves.
  useEffect(() => {
    if (sandbox.state !== 'running') return;
    for (const s of sessionsOf(sandbox.id)) if (s.state === 'dropped' && s.pid > 0) s.reconnect();
  }, [sandbox.state, sandbox.id]);

  const active = sessions.find((s) => s.key === activeKey) ?? sessions[sessions.length - 1] ?? null;

  useEffect(() => {
    if (visible && active) active.focus();
  }, [visible, active]);

  function add() {
    const s = newSession(sandbox.id);
    setActiveKey(s.key);
  }

  function close(s: TerminalSession) {
    const i = sessions.indexOf(s);
    closeSession(s);
    const rest = sessionsOf(sandbox.id);
    if (s === active) setActiveKey(rest[Math.min(i, rest.length - 1)]?.key ?? null);
  }

  const paused = sandbox.state !== 'running';

  return (
    <div className="terminal-panel">
      <div className="term-tabs" role="tablist" aria-label="Terminal sessions">
        {sessions.map((s) => (
          <div
            key={s.key}
            className={`term-tab${s === active ? ' active' : ''} term-${s.state}`}
            data-session={s.key}
          >
            <button
              role="tab"
              aria-selected={s === active}
              className="term-tab-label"
              onClick={() => setActiveKey(s.key)}
              title={`${s.title}${s.pid ? ` (pid ${s.pid})` : ''}: ${STATE_TEXT[s.state]}`}
            >
              <span className={`dot dot-${s.state}`} aria-hidden="true" />
              {s.title}
            </button>
            <button className="term-tab-close" aria-label={`Close ${s.title}`} onClick={() => close(s)}>
              ×
            </button>
          </div>
        ))}
        <button className="btn btn-small term-new" onClick={add} disabled={paused} title="Open another shell">
          + New session
        </button>
      </div>

      {active && <SessionBar session={active} />}
      {paused && (
        <div className="alert alert-info">
          The sandbox is {sandbox.state}; terminals reconnect when it is running again.
        </div>
      )}

      <div className="term-stage">
        {sessions.map((s) => (
          <TermView key={s.key} session={s} shown={visible && s === active} />
        ))}
        {sessions.length === 0 && (
          <div className="empty term-empty">
            <p>No terminal sessions.</p>
            <button className="btn btn-primary" onClick={add} disabled={paused}>
              Open a shell
            </button>
          </div>
        )}
      </div>
    </div>
  );
}

function SessionBar({ session: s }: { session: TerminalSession }) {
  return (
    <div className={`term-bar term-bar-${s.state}`} data-session={s.key} data-state={s.state}>
      <span className="term-status">
        <span className={`dot dot-${s.state}`} aria-hidden="true" />
        {STATE_TEXT[s.state]}
        {s.pid > 0 && <span className="muted"> · pid {s.pid}</span>}
        {s.state === 'exited' && s.exitCode !== null && <span className="muted"> · exit code {s.exitCode}</span>}
        {s.error && s.state !== 'open' && <span className="term-error"> · {s.error}</span>}
      </span>
      {s.state !== 'exited' && (
        <button
          className="btn btn-small btn-ghost"
          onClick={() => s.reconnect()}
          title={s.pid ? 'Reattach to the same shell' : 'Connect again'}
        >
          Reconnect
        </button>
      )}
    </div>
  );
}

function TermView({ session, shown }: { session: TerminalSession; shown: boolean }) {
  const ref = useRef<HTMLDivElement>(null);
  useLayoutEffect(() => {
    const el = ref.current!;
    session.mount(el);
    return () => session.unmount(el);
  }, [session]);
  useEffect(() => {
    if (shown) {
      session.fit();
      session.focus();
    }
  }, [shown, session]);
  return <div ref={ref} className={`term-view${shown ? '' : ' term-hidden'}`} data-session={session.key} />;
}
