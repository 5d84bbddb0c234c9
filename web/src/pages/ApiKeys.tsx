// The API keys page: the team's keys; create one (its secret is shown once)
// and revoke.
import { useState, type FormEvent } from 'react';
import { api, type APIKey } from '../api';
import { dateTime } from '../format';
import { ConfirmButton, ErrorBox, PageHeader, Spinner, copyText, notify, notifyError, usePoll } from '../components/ui';

export function ApiKeysPage() {
  const list = usePoll(() => api.apiKeys(), 0);
  const me = usePoll(() => api.me(), 0);
  const [name, setName] = useState('');
  const [role, setRole] = useState('member');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [created, setCreated] = useState<APIKey | null>(null);
  const [copied, setCopied] = useState(false);

  async function create(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setCopied(false);
    try {
      const k = await api.createApiKey(name.trim(), role);
      setCreated(k);
      setName('');
      list.reload();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  const keys = list.data?.api_keys ?? [];
  const isAdmin = me.data?.role === 'admin';

  return (
    <div className="page">
      <PageHeader title="API keys" />
      <p className="muted">
        Programs use a key in the <code>X-API-Key</code> header. A key is shown once, when it is created.
        {me.data && (
          <>
            {' '}
            Team <strong>{me.data.team.name}</strong>.
          </>
        )}
      </p>

      <form className="card form-row" onSubmit={create} aria-label="New API key">
        <label className="field grow">
          <span>Name</span>
          <input name="key_name" required placeholder="ci" value={name} onChange={(e) => setName(e.target.value)} />
        </label>
        <label className="field">
          <span>Role</span>
          <select name="key_role" value={role} onChange={(e) => setRole(e.target.value)}>
            <option value="member">member</option>
            <option value="admin" disabled={me.data != null && !isAdmin}>
              admin
            </option>
          </select>
        </label>
        <button className="btn btn-primary" type="submit" disabled={busy}>
          {busy ? 'Creating…' : 'Create key'}
        </button>
      </form>
      <ErrorBox error={error} />

      {created?.key && (
        <div className="card new-key" role="status">
          <h2>Key “{created.name}” created</h2>
          <p>Copy it now: it will not be shown again.</p>
          <div className="secret">
            <code className="mono" data-testid="new-key">
              {created.key}
            </code>
            <button
              className="btn btn-small btn-primary"
              onClick={async () => {
                try {
                  await copyText(created.key!);
                  setCopied(true);
                  notify('Key copied');
                } catch (err) {
                  notifyError(err);
                }
              }}
            >
              {copied ? 'Copied' : 'Copy'}
            </button>
            <button className="btn btn-small btn-ghost" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </div>
      )}

      <ErrorBox error={list.error} />
      {list.loading && !list.data ? (
        <div className="empty">
          <Spinner label="Loading keys…" />
        </div>
      ) : keys.length === 0 ? (
        <div className="empty">
          <p>No API keys yet.</p>
        </div>
      ) : (
        <table className="table table-cards" aria-label="API keys">
          <thead>
            <tr>
              <th>Name</th>
              <th>Key</th>
              <th>Role</th>
              <th>Created</th>
              <th>Last used</th>
              <th className="actions-col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.map((k) => (
              <tr key={k.id} data-key={k.id} className={k.revoked_at ? 'revoked' : ''}>
                <td data-label="Name">{k.name}</td>
                <td data-label="Key">
                  <code className="mono">{k.prefix}…</code>
                </td>
                <td data-label="Role">{k.role}</td>
                <td data-label="Created">{dateTime(k.created_at)}</td>
                <td data-label="Last used">{k.last_used_at ? dateTime(k.last_used_at) : 'never'}</td>
                <td className="actions-col">
                  {k.revoked_at ? (
                    <span className="badge badge-stopped" title={dateTime(k.revoked_at)}>
                      revoked
                    </span>
                  ) : (
                    <ConfirmButton
                      className="btn btn-small btn-danger-outline"
                      confirm="Revoke it"
                      onConfirm={async () => {
                        try {
                          await api.revokeApiKey(k.id);
                          notify(`Revoked ${k.name}`);
                          list.reload();
                        } catch (err) {
                          notifyError(err);
                        }
                      }}
                    >
                      Revoke
                    </ConfirmButton>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
