// The sandboxes page: the team's sandboxes, refreshed every few seconds,
// with the form that creates one from a template.
import { useEffect, useState, type FormEvent } from 'react';
import { api, type Sandbox, type Template } from '../api';
import { age, mib, timeLeft } from '../format';
import { Link, navigate, useLocation } from '../router';
import {
  ConfirmButton,
  ErrorBox,
  PageHeader,
  Spinner,
  StateBadge,
  notify,
  notifyError,
  useNow,
  usePoll,
} from '../components/ui';

const REFRESH_MS = 3000;

export function SandboxesPage() {
  const loc = useLocation();
  const preset = loc.query.get('new');
  const [filter, setFilter] = useState('');
  const [showForm, setShowForm] = useState(preset !== null);
  const list = usePoll(() => api.listSandboxes(filter || undefined), REFRESH_MS, [filter]);
  const now = useNow();

  useEffect(() => {
    if (preset !== null) setShowForm(true);
  }, [preset]);

  const sandboxes = list.data?.sandboxes ?? [];

  return (
    <div className="page">
      <PageHeader title="Sandboxes">
        <label className="inline-field">
          <span className="sr-only">Show</span>
          <select value={filter} onChange={(e) => setFilter(e.target.value)} aria-label="Filter by state">
            <option value="">Live</option>
            <option value="running">Running</option>
            <option value="paused">Paused</option>
            <option value="stopped">Stopped</option>
            <option value="dead">Dead</option>
          </select>
        </label>
        <button className="btn btn-primary" onClick={() => setShowForm((v) => !v)} aria-expanded={showForm}>
          {showForm ? 'Close' : 'New sandbox'}
        </button>
      </PageHeader>

      {showForm && (
        <CreateSandboxForm
          initialTemplate={preset || 'minimal'}
          onCancel={() => {
            setShowForm(false);
            if (preset !== null) navigate('/sandboxes', { replace: true });
          }}
        />
      )}

      <ErrorBox error={list.error} />

      {list.loading && !list.data ? (
        <div className="empty">
          <Spinner label="Loading sandboxes…" />
        </div>
      ) : sandboxes.length === 0 ? (
        <div className="empty">
          <p>{filter ? `No ${filter} sandboxes.` : 'No sandboxes are running.'}</p>
          {!showForm && (
            <button className="btn btn-primary" onClick={() => setShowForm(true)}>
              Create one
            </button>
          )}
        </div>
      ) : (
        <table className="table table-cards" aria-label="Sandboxes">
          <thead>
            <tr>
              <th>Sandbox</th>
              <th>State</th>
              <th>Template</th>
              <th>Resources</th>
              <th>Age</th>
              <th>Time left</th>
              <th className="actions-col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {sandboxes.map((sb) => (
              <SandboxRow key={sb.id} sb={sb} now={now} onChange={list.reload} />
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function SandboxRow({ sb, now, onChange }: { sb: Sandbox; now: number; onChange: () => void }) {
  const live = sb.state !== 'stopped' && sb.state !== 'dead';
  return (
    <tr data-sandbox={sb.id}>
      <td data-label="Sandbox">
        <Link href={`/sandboxes/${sb.id}`} className="mono">
          {sb.id}
        </Link>
        {sb.metadata && Object.keys(sb.metadata).length > 0 && (
          <div className="meta-tags">
            {Object.entries(sb.metadata).map(([k, v]) => (
              <span key={k} className="tag">
                {k}={v}
              </span>
            ))}
          </div>
        )}
      </td>
      <td data-label="State">
        <StateBadge state={sb.state} />
        {sb.reason && <div className="muted small">{sb.reason}</div>}
      </td>
      <td data-label="Template">{sb.template}</td>
      <td data-label="Resources">
        {sb.vcpus} vCPU · {mib(sb.memory_mib)}
      </td>
      <td data-label="Age">{age(sb.created_at, now)}</td>
      <td data-label="Time left">{live ? timeLeft(sb.expires_at, now) : '—'}</td>
      <td className="actions-col">
        <SandboxActions sb={sb} onChange={onChange} />
      </td>
    </tr>
  );
}

/** Pause, resume and kill, with the server's answer shown when it says no. */
export function SandboxActions({
  sb,
  onChange,
  onKilled,
}: {
  sb: Sandbox;
  onChange: (sb?: Sandbox) => void;
  onKilled?: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const live = sb.state !== 'stopped' && sb.state !== 'dead';
  async function run(what: string, fn: () => Promise<Sandbox | void>) {
    setBusy(true);
    try {
      const res = await fn();
      notify(`${sb.id}: ${what}`);
      onChange(res || undefined);
    } catch (err) {
      notifyError(err);
    } finally {
      setBusy(false);
    }
  }
  if (!live) return null;
  return (
    <div className="row-actions">
      {sb.state === 'paused' ? (
        <button className="btn btn-small" disabled={busy} onClick={() => run('resumed', () => api.resumeSandbox(sb.id))}>
          Resume
        </button>
      ) : (
        <button
          className="btn btn-small"
          disabled={busy || sb.state !== 'running'}
          onClick={() => run('paused', () => api.pauseSandbox(sb.id))}
        >
          Pause
        </button>
      )}
      <ConfirmButton
        className="btn btn-small btn-danger-outline"
        confirm="Kill it"
        disabled={busy}
        onConfirm={async () => {
          await run('killed', () => api.killSandbox(sb.id));
          onKilled?.();
        }}
      >
        Kill
      </ConfirmButton>
    </div>
  );
}

export function CreateSandboxForm({ initialTemplate, onCancel }: { initialTemplate: string; onCancel: () => void }) {
  const templates = usePoll(() => api.templates(), 0);
  const [template, setTemplate] = useState(initialTemplate);
  const [vcpus, setVcpus] = useState('1');
  const [memory, setMemory] = useState('256');
  const [timeout, setTimeoutSecs] = useState('900');
  const [metadata, setMetadata] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => setTemplate(initialTemplate), [initialTemplate]);

  const list: Template[] = templates.data?.templates ?? [];
  const chosen = list.find((t) => t.name === template);
  const fixed = chosen?.kind === 'snapshot';

  async function submit(e: FormEvent) {
    e.preventDefault();
    setError(null);
    const meta: Record<string, string> = {};
    for (const part of metadata.split(',').map((s) => s.trim()).filter(Boolean)) {
      const eq = part.indexOf('=');
      if (eq <= 0) {
        setError(new Error(`metadata "${part}" is not key=value`));
        return;
      }
      meta[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
    }
    setBusy(true);
    try {
      const sb = await api.createSandbox({
        template,
        ...(fixed ? {} : { vcpus: Number(vcpus), memory_mib: Number(memory) }),
        timeout_seconds: Number(timeout),
        ...(Object.keys(meta).length ? { metadata: meta } : {}),
      });
      notify(`Created ${sb.id}`);
      navigate(`/sandboxes/${sb.id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="card form-grid" onSubmit={submit} aria-label="New sandbox">
      <label className="field">
        <span>Template</span>
        <select name="template" value={template} onChange={(e) => setTemplate(e.target.value)}>
          {!list.some((t) => t.name === template) && <option value={template}>{template}</option>}
          {list.map((t) => (
            <option key={t.name} value={t.name}>
              {t.name}
              {t.kind === 'snapshot' ? ' (snapshot)' : ''}
            </option>
          ))}
        </select>
      </label>
      <label className="field">
        <span>vCPUs</span>
        <input
          name="vcpus"
          type="number"
          min={1}
          max={64}
          required
          disabled={fixed}
          value={fixed ? String(chosen?.vcpus ?? '') : vcpus}
          onChange={(e) => setVcpus(e.target.value)}
        />
      </label>
      <label className="field">
        <span>Memory (MiB)</span>
        <input
          name="memory_mib"
          type="number"
          min={64}
          step={64}
          required
          disabled={fixed}
          value={fixed ? String(chosen?.memory_mib ?? '') : memory}
          onChange={(e) => setMemory(e.target.value)}
        />
      </label>
      <label className="field">
        <span>Timeout (seconds)</span>
        <input
          name="timeout_seconds"
          type="number"
          min={1}
          required
          value={timeout}
          onChange={(e) => setTimeoutSecs(e.target.value)}
        />
      </label>
      <label className="field field-wide">
        <span>Metadata (optional, key=value, comma separated)</span>
        <input name="metadata" placeholder="owner=me" value={metadata} onChange={(e) => setMetadata(e.target.value)} />
      </label>
      {fixed && <p className="muted small field-wide">A snapshot template keeps the resources it was taken with.</p>}
      <div className="field-wide">
        <ErrorBox error={error || templates.error} />
      </div>
      <div className="form-actions field-wide">
        <button type="button" className="btn btn-ghost" onClick={onCancel}>
          Cancel
        </button>
        <button type="submit" className="btn btn-primary" disabled={busy}>
          {busy ? 'Creating…' : 'Create sandbox'}
        </button>
      </div>
    </form>
  );
}
