// Small building blocks shared by the pages: error boxes, notices, a
// two-step confirm button, state badges and polling hooks.
import { useCallback, useEffect, useRef, useState, type ReactNode } from 'react';
import { errorMessage } from '../api';

export function ErrorBox({ error, onDismiss }: { error: unknown; onDismiss?: () => void }) {
  if (!error) return null;
  return (
    <div className="alert alert-error" role="alert">
      <span>{errorMessage(error)}</span>
      {onDismiss && (
        <button className="alert-close" aria-label="Dismiss" onClick={onDismiss}>
          ×
        </button>
      )}
    </div>
  );
}

// ---- notices: short messages about what an action did --------------------

interface Notice {
  id: number;
  kind: 'ok' | 'error';
  text: string;
}
let noticeId = 0;
let notices: Notice[] = [];
const noticeListeners = new Set<() => void>();

export function notify(text: string, kind: 'ok' | 'error' = 'ok') {
  const n = { id: ++noticeId, kind, text };
  notices = [...notices, n].slice(-4);
  noticeListeners.forEach((fn) => fn());
  window.setTimeout(() => dismissNotice(n.id), kind === 'error' ? 9000 : 4000);
}

export function notifyError(err: unknown) {
  notify(errorMessage(err), 'error');
}

function dismissNotice(id: number) {
  notices = notices.filter((n) => n.id !== id);
  noticeListeners.forEach((fn) => fn());
}

export function Notices() {
  const [, force] = useState(0);
  useEffect(() => {
    const fn = () => force((x) => x + 1);
    noticeListeners.add(fn);
    return () => {
      noticeListeners.delete(fn);
    };
  }, []);
  return (
    <div className="notices" aria-live="polite">
      {notices.map((n) => (
        <div key={n.id} className={`notice notice-${n.kind}`} role={n.kind === 'error' ? 'alert' : 'status'}>
          <span>{n.text}</span>
          <button className="alert-close" aria-label="Dismiss" onClick={() => dismissNotice(n.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}

/**
 * A button that asks once more before doing something that cannot be undone.
 */
export function ConfirmButton(props: {
  children: ReactNode;
  confirm: string;
  onConfirm: () => void | Promise<void>;
  className?: string;
  disabled?: boolean;
  title?: string;
}) {
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (!asking) return;
    const t = window.setTimeout(() => setAsking(false), 5000);
    return () => window.clearTimeout(t);
  }, [asking]);
  if (asking) {
    return (
      <span className="confirm">
        <button
          className={`btn btn-danger btn-small`}
          disabled={busy}
          onClick={async () => {
            setBusy(true);
            try {
              await props.onConfirm();
            } finally {
              setBusy(false);
              setAsking(false);
            }
          }}
        >
          {props.confirm}
        </button>
        <button className="btn btn-ghost btn-small" onClick={() => setAsking(false)}>
          Cancel
        </button>
      </span>
    );
  }
  return (
    <button
      className={props.className ?? 'btn btn-small'}
      disabled={props.disabled}
      title={props.title}
      onClick={() => setAsking(true)}
    >
      {props.children}
    </button>
  );
}

export function StateBadge({ state }: { state: string }) {
  return <span className={`badge badge-${state}`}>{state}</span>;
}

export function Spinner({ label }: { label?: string }) {
  return (
    <span className="spinner-wrap">
      <span className="spinner" aria-hidden="true" />
      {label && <span>{label}</span>}
    </span>
  );
}

/** Re-renders every interval, for clocks such as "time left". */
export function useNow(intervalMs = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = window.setInterval(() => setNow(Date.now()), intervalMs);
    return () => window.clearInterval(t);
  }, [intervalMs]);
  return now;
}

/**
 * Loads data now and then every intervalMs while the page is visible; the
 * last error is kept until a load succeeds. reload() loads at once.
 */
export function usePoll<T>(load: () => Promise<T>, intervalMs: number, deps: unknown[] = []) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const loadRef = useRef(load);
  loadRef.current = load;
  const gen = useRef(0);

  const reload = useCallback(async () => {
    const mine = ++gen.current;
    try {
      const d = await loadRef.current();
      if (mine !== gen.current) return;
      setData(d);
      setError(null);
    } catch (err) {
      if (mine !== gen.current) return;
      setError(err);
    } finally {
      if (mine === gen.current) setLoading(false);
    }
  }, []);

  useEffect(() => {
    setLoading(true);
    setData(undefined);
    reload();
    if (intervalMs <= 0) return;
    const t = window.setInterval(() => {
      if (document.visibilityState === 'visible') reload();
    }, intervalMs);
    return () => {
      window.clearInterval(t);
      gen.current++;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [intervalMs, reload, ...deps]);

  return { data, error, loading, reload, setData };
}

export function copyText(text: string): Promise<void> {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const ta = document.createElement('textarea');
  ta.value = text;
  ta.setAttribute('readonly', '');
  ta.style.position = 'fixed';
  ta.style.opacity = '0';
  document.body.appendChild(ta);
  ta.select();
  try {
    if (!document.execCommand('copy')) throw new Error('copy was refused');
  } finally {
    ta.remove();
  }
  return Promise.resolve();
}

export function PageHeader({ title, children }: { title: ReactNode; children?: ReactNode }) {
  return (
    <div className="page-header">
      <h1>{title}</h1>
      {children && <div className="page-actions">{children}</div>}
    </div>
  );
}
