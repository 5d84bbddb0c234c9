// The snapshot tab: save the sandbox as a template that new sandboxes can be
// launched from.
import { useState, type FormEvent } from 'react';
import { api, type Sandbox, type Template } from '../api';
import { Link } from '../router';
import { ErrorBox } from './ui';

export function SnapshotPanel({ sandbox }: { sandbox: Sandbox }) {
  const [name, setName] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [made, setMade] = useState<Template | null>(null);
  const can = sandbox.state === 'running' || sandbox.state === 'paused';

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setMade(null);
    try {
      setMade(await api.snapshot(sandbox.id, name.trim()));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="card narrow-card">
      <h2>Snapshot to template</h2>
      <p className="muted">
        Saves this sandbox's memory and disk as a template. Sandboxes launched from it start where this one is
        now, with {sandbox.vcpus} vCPU and {sandbox.memory_mib} MiB.
      </p>
      <form className="form-row" onSubmit={submit} aria-label="Snapshot">
        <label className="field grow">
          <span>Template name</span>
          <input
            name="snapshot_name"
            required
            placeholder="my-snapshot"
            value={name}
            onChange={(e) => setName(e.target.value)}
          />
        </label>
        <button className="btn btn-primary" type="submit" disabled={busy || !can}>
          {busy ? 'Snapshotting…' : 'Create snapshot'}
        </button>
      </form>
      {!can && <p className="muted small">Only a running or paused sandbox can be snapshotted.</p>}
      <ErrorBox error={error} />
      {made && (
        <div className="alert alert-ok" role="status">
          Template <strong>{made.name}</strong> is ready. <Link href={`/sandboxes?new=${encodeURIComponent(made.name)}`}>Launch a sandbox from it</Link> or see{' '}
          <Link href="/templates">templates</Link>.
        </div>
      )}
    </div>
  );
}
