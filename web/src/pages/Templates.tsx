// The templates page: images and snapshots a sandbox can start from; launch
// one, or delete a snapshot.
import { api, type Template } from '../api';
import { dateTime, mib } from '../format';
import { navigate } from '../router';
import { ConfirmButton, ErrorBox, PageHeader, Spinner, notify, notifyError, usePoll } from '../components/ui';

export function TemplatesPage() {
  const list = usePoll(() => api.templates(), 10000);
  const templates: Template[] = list.data?.templates ?? [];

  return (
    <div className="page">
      <PageHeader title="Templates">
        <button className="btn btn-ghost" onClick={() => list.reload()}>
          Refresh
        </button>
      </PageHeader>
      <p className="muted">
        Images are built in; snapshots are made from a sandbox (its Snapshot tab) and start where it was.
      </p>
      <ErrorBox error={list.error} />
      {list.loading && !list.data ? (
        <div className="empty">
          <Spinner label="Loading templates…" />
        </div>
      ) : templates.length === 0 ? (
        <div className="empty">
          <p>No templates.</p>
        </div>
      ) : (
        <table className="table table-cards" aria-label="Templates">
          <thead>
            <tr>
              <th>Name</th>
              <th>Kind</th>
              <th>Resources</th>
              <th>Created</th>
              <th className="actions-col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {templates.map((t) => (
              <tr key={`${t.kind}:${t.name}`} data-template={t.name}>
                <td data-label="Name">
                  <strong>{t.name}</strong>
                </td>
                <td data-label="Kind">
                  <span className={`badge badge-kind-${t.kind}`}>{t.kind}</span>
                </td>
                <td data-label="Resources">
                  {t.vcpus != null && t.memory_mib != null ? `${t.vcpus} vCPU · ${mib(t.memory_mib)}` : 'chosen at launch'}
                </td>
                <td data-label="Created">{t.created_at ? dateTime(t.created_at) : '—'}</td>
                <td className="actions-col">
                  <div className="row-actions">
                    <button
                      className="btn btn-small btn-primary"
                      onClick={() => navigate(`/sandboxes?new=${encodeURIComponent(t.name)}`)}
                    >
                      Launch
                    </button>
                    {t.kind === 'snapshot' && (
                      <ConfirmButton
                        className="btn btn-small btn-danger-outline"
                        confirm="Delete it"
                        onConfirm={async () => {
                          try {
                            await api.deleteSnapshot(t.name);
                            notify(`Deleted snapshot ${t.name}`);
                            list.reload();
                          } catch (err) {
                            notifyError(err);
                          }
                        }}
                      >
                        Delete
                      </ConfirmButton>
                    )}
                  </div>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
