// The files tab: browse a sandbox's filesystem, upload into the directory
// shown and download files. Downloads go through fetch with the session
// token (a plain link cannot carry the header) and are saved from a blob.
import { useEffect, useRef, useState, type FormEvent } from 'react';
import { api, type FileEntry, type Sandbox } from '../api';
import { bytes, dateTime } from '../format';
import { ErrorBox, Spinner, notify, notifyError } from './ui';

function join(dir: string, name: string) {
  return dir.endsWith('/') ? dir + name : `${dir}/${name}`;
}

function parent(dir: string) {
  if (dir === '/') return '/';
  const i = dir.replace(/\/+$/, '').lastIndexOf('/');
  return i <= 0 ? '/' : dir.slice(0, i);
}

export function FilesPanel({ sandbox, visible }: { sandbox: Sandbox; visible: boolean }) {
  const home = sandbox.template === 'minimal' ? '/root' : '/home/user';
  const [dir, setDir] = useState(home);
  const [pathInput, setPathInput] = useState(home);
  const loadedOnce = useRef(false);
  const [entries, setEntries] = useState<FileEntry[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(false);
  const [uploading, setUploading] = useState(false);
  const [downloading, setDownloading] = useState('');
  const fileInput = useRef<HTMLInputElement>(null);
  const gen = useRef(0);

  const dirRef = useRef(home);
  const inFlight = useRef(0);

  // A refresh (on showing the tab) never overrides a directory the user is
  // going to: it is skipped while another load runs, and any later load wins.
  async function load(path: string, refresh = false) {
    if (refresh && inFlight.current > 0) return;
    const mine = ++gen.current;
    inFlight.current++;
    setLoading(true);
    try {
      const res = await api.listFiles(sandbox.id, path);
      if (mine !== gen.current) return;
      setEntries(res.entries ?? []);
      dirRef.current = path;
      setDir(path);
      setPathInput(path);
      setError(null);
      loadedOnce.current = true;
    } catch (err) {
      if (mine !== gen.current) return;
      if (!loadedOnce.current && path !== '/') {
        // The home directory is not there: start at the root instead.
        loadedOnce.current = true;
        window.setTimeout(() => load('/'));
        return;
      }
      setError(err);
    } finally {
      inFlight.current--;
      if (mine === gen.current) setLoading(false);
    }
  }

  useEffect(() => {
    if (visible) load(dirRef.current, true);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [visible, sandbox.id]);

  function go(e: FormEvent) {
    e.preventDefault();
    const p = pathInput.trim();
    if (!p.startsWith('/')) {
      setError(new Error('paths are absolute: start with /'));
      return;
    }
    load(p.length > 1 ? p.replace(/\/+$/, '') : p);
  }

  async function upload(files: FileList | null) {
    if (!files || files.length === 0) return;
    setUploading(true);
    try {
      for (const f of Array.from(files)) {
        const res = await api.upload(sandbox.id, join(dir, f.name), f, f.name);
        notify(`Uploaded ${res.path} (${bytes(res.size)})`);
      }
      await load(dir);
    } catch (err) {
      notifyError(err);
    } finally {
      setUploading(false);
      if (fileInput.current) fileInput.current.value = '';
    }
  }

  async function download(entry: FileEntry) {
    setDownloading(entry.path);
    try {
      const blob = await api.download(sandbox.id, entry.path);
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = entry.name;
      document.body.appendChild(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      notifyError(err);
    } finally {
      setDownloading('');
    }
  }

  const crumbs = dir.split('/').filter(Boolean);

  return (
    <div className="files">
      <div className="files-toolbar">
        <form className="path-form" onSubmit={go}>
          <button type="button" className="btn btn-small" onClick={() => load(parent(dir))} disabled={dir === '/'} title="Parent directory">
            ↑ Up
          </button>
          <input
            aria-label="Path"
            name="path"
            className="mono"
            value={pathInput}
            onChange={(e) => setPathInput(e.target.value)}
            spellCheck={false}
          />
          <button type="submit" className="btn btn-small">
            Go
          </button>
          <button type="button" className="btn btn-small btn-ghost" onClick={() => load(dir)} title="Refresh">
            Refresh
          </button>
        </form>
        <label className={`btn btn-small btn-primary upload${uploading ? ' disabled' : ''}`}>
          {uploading ? 'Uploading…' : 'Upload files'}
          <input
            ref={fileInput}
            type="file"
            multiple
            name="upload"
            aria-label="Upload files"
            disabled={uploading}
            onChange={(e) => upload(e.target.files)}
          />
        </label>
      </div>

      <nav className="crumbs path-crumbs" aria-label="Directory">
        <button className="link" onClick={() => load('/')}>
          /
        </button>
        {crumbs.map((c, i) => {
          const p = '/' + crumbs.slice(0, i + 1).join('/');
          return (
            <span key={p}>
              <button className="link" onClick={() => load(p)}>
                {c}
              </button>
              {i < crumbs.length - 1 && ' / '}
            </span>
          );
        })}
        {loading && <Spinner />}
      </nav>

      <ErrorBox error={error} onDismiss={() => setError(null)} />

      {entries &&
        (entries.length === 0 ? (
          <div className="empty">
            <p className="muted">This directory is empty.</p>
          </div>
        ) : (
          <table className="table files-table" aria-label="Files">
            <thead>
              <tr>
                <th>Name</th>
                <th className="num">Size</th>
                <th className="hide-narrow">Mode</th>
                <th className="hide-narrow">Modified</th>
                <th className="actions-col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {entries.map((e) => (
                <tr key={e.path} data-path={e.path}>
                  <td className="file-name">
                    {e.type === 'dir' ? (
                      <button className="link" onClick={() => load(e.path)}>
                        <span className="file-icon" aria-hidden="true">
                          ▸
                        </span>
                        {e.name}/
                      </button>
                    ) : (
                      <span>
                        <span className="file-icon" aria-hidden="true">
                          {e.type === 'symlink' ? '↪' : '·'}
                        </span>
                        {e.name}
                      </span>
                    )}
                  </td>
                  <td className="num">{e.type === 'dir' ? '—' : bytes(e.size)}</td>
                  <td className="mono hide-narrow">{e.mode}</td>
                  <td className="hide-narrow">{dateTime(e.modified_at)}</td>
                  <td className="actions-col">
                    {e.type !== 'dir' && (
                      <button
                        className="btn btn-small"
                        disabled={downloading === e.path}
                        onClick={() => download(e)}
                        aria-label={`Download ${e.name}`}
                      >
                        {downloading === e.path ? 'Downloading…' : 'Download'}
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        ))}
    </div>
  );
}
