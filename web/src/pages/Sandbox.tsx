// One sandbox: overview with metrics, terminal sessions, files, and
// snapshot-to-template. The active tab is in the URL (?tab=terminal).
import { useEffect, useState } from 'react';
import { api, ApiError, type Sandbox } from '../api';
import { dateTime, mib, timeLeft } from '../format';
import { Link, navigate, useLocation } from '../router';
import { ErrorBox, PageHeader, Spinner, StateBadge, notify, notifyError, useNow, usePoll } from '../components/ui';
import { SandboxActions } from './Sandboxes';
import { Metrics } from '../components/Metrics';
import { TerminalPanel } from '../components/TerminalPanel';
import { FilesPanel } from '../components/FilesPanel';
import { SnapshotPanel } from '../components/SnapshotPanel';
import { forgetSandbox } from '../terminal/session';

const TABS = [
  { id: 'overview', label: 'Overview' },
  { id: 'terminal', label: 'Terminal' },
  { id: 'files', label: 'Files' },
  { id: 'snapshot', label: 'Snapshot' },
] as const;
type Tab = (typeof TABS)[number]['id'];

export function SandboxPage({ id }: { id: string }) {
  const loc = useLocation();
  const q = loc.query.get('tab');
  const tab: Tab = TABS.some((t) => t.id === q) ? (q as Tab) : 'overview';
  const sb = usePoll(() => api.getSandbox(id), 3000, [id]);
  const now = useNow();
  // Panels are mounted the first time they are shown and then kept: the
  // terminal's sessions and scrollback must outlive a visit to files.
  const [seen, setSeen] = useState<Set<Tab>>(() => new Set([tab]));
  useEffect(() => {
    setSeen((s) => (s.has(tab) ? s : new Set(s).add(tab)));
  }, [tab]);

  const data = sb.data;
  const live = data && data.state !== 'stopped' && data.state !== 'dead';
  const notFound = sb.error instanceof ApiError && sb.error.status === 404;

  useEffect(() => {
    if (data && !live) forgetSandbox(id);
  }, [data, live, id]);

  function setTab(t: Tab) {
    const params = new URLSearchParams(loc.query);
    if (t === 'overview') params.delete('tab');
    else params.set('tab', t);
    const qs = params.toString();
    navigate(`/sandboxes/${encodeURIComponent(id)}${qs ? `?${qs}` : ''}`);
  }

  if (!data) {
    return (
      <div className="page">
        <p className="crumbs">
          <Link href="/sandboxes">Sandboxes</Link> /
        </p>
        {notFound ? (
          <div className="empty">
            <h1>Sandbox not found</h1>
            <p className="muted">
              <code>{id}</code> does not exist or belongs to another team.
            </p>
          </div>
        ) : sb.error ? (
          <ErrorBox error={sb.error} />
        ) : (
          <div className="empty">
            <Spinner label="Loading…" />
          </div>
        )}
      </div>
    );
  }

  const onChange = (next?: Sandbox) => (next ? sb.setData(next) : sb.reload());

  return (
    <div className="page sandbox-page">
      <p className="crumbs">
        <Link href="/sandboxes">Sandboxes</Link> /
      </p>
      <PageHeader
        title={
          <span className="title-with-badge">
            <span className="mono">{data.id}</span> <StateBadge state={data.state} />
          </span>
        }
      >
        {live && (
          <span className="muted small" title={data.expires_at ?? ''}>
            {timeLeft(data.expires_at, now)} left
          </span>
        )}
        {live && data.state === 'running' && <ExtendButton sb={data} onChange={onChange} />}
        <SandboxActions sb={data} onChange={onChange} onKilled={() => forgetSandbox(id)} />
      </PageHeader>
      <ErrorBox error={sb.error} />

      <div className="tabs" role="tablist" aria-label="Sandbox">
        {TABS.map((t) => (
          <button
            key={t.id}
            role="tab"
            id={`tab-${t.id}`}
            aria-selected={tab === t.id}
            aria-controls={`panel-${t.id}`}
            className={`tab${tab === t.id ? ' active' : ''}`}
            onClick={() => setTab(t.id)}
          >
            {t.label}
          </button>
        ))}
      </div>

      {TABS.map((t) =>
        seen.has(t.id) || tab === t.id ? (
          <section
            key={t.id}
            id={`panel-${t.id}`}
            role="tabpanel"
            aria-labelledby={`tab-${t.id}`}
            className={`panel panel-${t.id}`}
            hidden={tab !== t.id}
          >
            {t.id === 'overview' && <Overview sb={data} now={now} visible={tab === 'overview'} />}
            {t.id === 'terminal' &&
              (live ? (
                <TerminalPanel sandbox={data} visible={tab === 'terminal'} />
              ) : (
                <Ended sb={data} />
              ))}
            {t.id === 'files' && (live ? <FilesPanel sandbox={data} visible={tab === 'files'} /> : <Ended sb={data} />)}
            {t.id === 'snapshot' && <SnapshotPanel sandbox={data} />}
          </section>
        ) : null,
      )}
    </div>
  );
}

function Ended({ sb }: { sb: Sandbox }) {
  return (
    <div className="empty">
      <p>
        This sandbox is {sb.state}
        {sb.reason ? ` (${sb.reason})` : ''}.
      </p>
    </div>
  );
}

function ExtendButton({ sb, onChange }: { sb: Sandbox; onChange: (sb?: Sandbox) => void }) {
  const [busy, setBusy] = useState(false);
  return (
    <button
      className="btn btn-small"
      disabled={busy}
      title="Keep it running 15 more minutes from now"
      onClick={async () => {
        setBusy(true);
        try {
          const next = await api.setTimeout(sb.id, 15 * 60);
          notify(`${sb.id} now expires in 15 minutes`);
          onChange(next);
        } catch (err) {
          notifyError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      +15 min
    </button>
  );
}

function Overview({ sb, now, visible }: { sb: Sandbox; now: number; visible: boolean }) {
  const rows: [string, React.ReactNode][] = [
    ['ID', <span className="mono">{sb.id}</span>],
    ['Template', <Link href="/templates">{sb.template}</Link>],
    ['State', <StateBadge state={sb.state} />],
    ['Reason', sb.reason || '—'],
    ['vCPUs', sb.vcpus],
    ['Memory', mib(sb.memory_mib)],
    ['Host', sb.host_id || '—'],
    ['Internet access', sb.egress ? 'yes' : 'no'],
    ['Created', dateTime(sb.created_at)],
    [
      'Expires',
      sb.expires_at ? (
        <>
          {dateTime(sb.expires_at)} <span className="muted">({timeLeft(sb.expires_at, now)})</span>
        </>
      ) : (
        '—'
      ),
    ],
    ['Ended', dateTime(sb.ended_at)],
    [
      'Metadata',
      sb.metadata && Object.keys(sb.metadata).length ? (
        <span className="meta-tags">
          {Object.entries(sb.metadata).map(([k, v]) => (
            <span key={k} className="tag">
              {k}={v}
            </span>
          ))}
        </span>
      ) : (
        '—'
      ),
    ],
  ];
  return (
    <div className="overview">
      <div className="card">
        <h2>Details</h2>
        <dl className="details">
          {rows.map(([k, v]) => (
            <div key={k} className="detail">
              <dt>{k}</dt>
              <dd>{v}</dd>
            </div>
          ))}
        </dl>
      </div>
      <div className="card">
        <h2>Metrics</h2>
        {sb.state === 'running' ? (
          <Metrics sandboxId={sb.id} active={visible} />
        ) : (
          <p className="muted">Metrics are sampled while the sandbox is running.</p>
        )}
      </div>
    </div>
  );
}
