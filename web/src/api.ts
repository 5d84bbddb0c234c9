// The control plane's REST API as the dashboard uses it (docs/api.md), with
// the session token from sign-in kept in localStorage.

export type SandboxState =
  | 'starting'
  | 'running'
  | 'pausing'
  | 'paused'
  | 'resuming'
  | 'stopping'
  | 'stopped'
  | 'dead';

export interface Sandbox {
  id: string;
  team_id: string;
  template: string;
  state: SandboxState;
  vcpus: number;
  memory_mib: number;
  metadata: Record<string, string> | null;
  egress: boolean;
  host_id: string;
  reason: string;
  created_at: string;
  updated_at: string;
  expires_at: string | null;
  ended_at: string | null;
}

export interface Template {
  name: string;
  kind: 'image' | 'snapshot';
  vcpus: number | null;
  memory_mib: number | null;
  id?: string;
  created_at?: string;
}

export interface APIKey {
  id: string;
  name: string;
  prefix: string;
  role: string;
  created_at: string;
  last_used_at: string | null;
  revoked_at: string | null;
  key?: string;
}

export interface User {
  id: string;
  team_id: string;
  email: string;
  role: string;
  created_at: string;
}

export interface Team {
  id: string;
  name: string;
  created_at: string;
}

export interface Me {
  team: Team;
  role: string;
  user: User | null;
  api_key: APIKey | null;
}

export interface FileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size: number;
  mode: string;
  modified_at: string;
}

export interface Metrics {
  sampled_at: string;
  cpu_count: number;
  cpu_used_pct: number;
  mem_total_mib: number;
  mem_used_mib: number;
  disk_total_mib: number;
  disk_used_mib: number;
}

export interface ExecResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  status: string;
  error: string;
}

export interface CreateSandbox {
  template: string;
  vcpus?: number;
  memory_mib?: number;
  timeout_seconds?: number;
  metadata?: Record<string, string>;
}

/** An answer from the API other than success, with the server's message. */
export class ApiError extends Error {
  status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
    this.name = 'ApiError';
  }
}

const TOKEN_KEY = 'wrenn.session';

interface Session {
  token: string;
  expires_at: string;
  email: string;
}

type Listener = () => void;
const listeners = new Set<Listener>();

export function onSessionChange(fn: Listener): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit() {
  for (const fn of listeners) fn();
}

export function getSession(): Session | null {
  const raw = localStorage.getItem(TOKEN_KEY);
  if (!raw) return null;
  try {
    const s = JSON.parse(raw) as Session;
    if (!s.token || (s.expires_at && Date.parse(s.expires_at) <= Date.now())) {
      localStorage.removeItem(TOKEN_KEY);
      return null;
    }
    return s;
  } catch {
    localStorage.removeItem(TOKEN_KEY);
    return null;
  }
}

export function token(): string {
  return getSession()?.token ?? '';
}

export function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  emit();
}

/** Turns a failed response into an ApiError carrying the server's message. */
async function failure(res: Response): Promise<ApiError> {
  let message = '';
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === 'string') message = body.message;
  } catch {
    message = text.trim().slice(0, 300);
  }
  if (!message) message = res.statusText || 'request failed';
  return new ApiError(res.status, message);
}

async function raw(method: string, path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const t = token();
  if (t) headers.set('Authorization', `Bearer ${t}`);
  let res: Response;
  try {
    res = await fetch(path, { ...init, method, headers });
  } catch (err) {
    throw new ApiError(0, `cannot reach the control plane (${(err as Error).message})`);
  }
  if (!res.ok) {
    const err = await failure(res);
    // A token the server no longer takes ends the session; the app then shows
    // the sign-in page. A wrong password at sign-in is a 401 too, but there is
    // no session to end then.
    if (res.status === 401 && t) signOut();
    throw err;
  }
  return res;
}

async function json<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = {};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  const res = await raw(method, path, init);
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

const enc = encodeURIComponent;

export const api = {
  async login(email: string, password: string): Promise<void> {
    const res = await json<{ token: string; expires_at: string; user: User }>('POST', '/v1/auth/login', {
      email,
      password,
    });
    const s: Session = { token: res.token, expires_at: res.expires_at, email: res.user?.email ?? email };
    localStorage.setItem(TOKEN_KEY, JSON.stringify(s));
    emit();
  },
  me: () => json<Me>('GET', '/v1/me'),

  listSandboxes: (state?: string) =>
    json<{ sandboxes: Sandbox[]; next_cursor: string }>(
      'GET',
      `/v1/sandboxes?limit=100${state ? `&state=${enc(state)}` : ''}`,
    ),
  getSandbox: (id: string) => json<Sandbox>('GET', `/v1/sandboxes/${enc(id)}`),
  createSandbox: (req: CreateSandbox) => json<Sandbox>('POST', '/v1/sandboxes', req),
  killSandbox: (id: string) => json<void>('DELETE', `/v1/sandboxes/${enc(id)}`),
  pauseSandbox: (id: string) => json<Sandbox>('POST', `/v1/sandboxes/${enc(id)}/pause`),
  resumeSandbox: (id: string) => json<Sandbox>('POST', `/v1/sandboxes/${enc(id)}/resume`, {}),
  setTimeout: (id: string, seconds: number) =>
    json<Sandbox>('POST', `/v1/sandboxes/${enc(id)}/timeout`, { timeout_seconds: seconds }),
  metrics: (id: string) => json<Metrics>('GET', `/v1/sandboxes/${enc(id)}/metrics`),
  exec: (id: string, cmd: string, args: string[], timeout_seconds = 30) =>
    json<ExecResult>('POST', `/v1/sandboxes/${enc(id)}/exec`, { cmd, args, timeout_seconds }),

  listFiles: (id: string, path: string) =>
    json<{ entries: FileEntry[] }>('GET', `/v1/sandboxes/${enc(id)}/files/list?path=${enc(path)}`),
  async upload(id: string, path: string, file: Blob, name: string) {
    const form = new FormData();
    form.append('file', file, name);
    const res = await raw('POST', `/v1/sandboxes/${enc(id)}/files?path=${enc(path)}`, { body: form });
    return (await res.json()) as { path: string; size: number };
  },
  async download(id: string, path: string): Promise<Blob> {
    const res = await raw('GET', `/v1/sandboxes/${enc(id)}/files?path=${enc(path)}`);
    return res.blob();
  },

  templates: () => json<{ templates: Template[] }>('GET', '/v1/templates'),
  snapshot: (sandbox_id: string, name: string) => json<Template>('POST', '/v1/snapshots', { sandbox_id, name }),
  deleteSnapshot: (name: string) => json<void>('DELETE', `/v1/snapshots/${enc(name)}`),

  apiKeys: () => json<{ api_keys: APIKey[] }>('GET', '/v1/api-keys'),
  createApiKey: (name: string, role: string) => json<APIKey>('POST', '/v1/api-keys', { name, role }),
  revokeApiKey: (id: string) => json<void>('DELETE', `/v1/api-keys/${enc(id)}`),
};

/** The terminal WebSocket's URL; the token rides in the query string. */
export function ptyURL(id: string, cols: number, rows: number, pid?: number): string {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams({ token: token(), cols: String(cols), rows: String(rows) });
  if (pid) q.set('pid', String(pid));
  return `${proto}//${location.host}/v1/sandboxes/${enc(id)}/pty?${q}`;
}

export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return err.status ? `${err.message} (${err.status})` : err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
