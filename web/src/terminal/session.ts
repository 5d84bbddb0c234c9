// One terminal session: an xterm.js terminal joined to a PTY in a sandbox
// over the control plane's WebSocket (docs/api.md, "Terminal WebSocket").
//
// A session lives outside React. Its xterm element is created once and moved
// between containers, so the terminal, its scrollback and its socket survive
// tab switches and page changes inside the app. When the socket drops, the
// session reattaches to the same PTY process by the pid the server sent first.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { api, ptyURL } from '../api';

export type SessionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'dropped' | 'exited';

/** Keystrokes are held this long and then sent together as one frame. */
export const INPUT_BATCH_MS = 50;
/** Input kept while disconnected, at most; older input is dropped past it. */
const MAX_PENDING_BYTES = 1 << 20;
/** Delays before automatic reconnect attempts after an unexpected drop. */
const RETRY_DELAYS_MS = [250, 1000, 2000, 4000, 8000];
/** Close code the test hook uses to simulate a dropped connection. */
const TEST_DROP_CODE = 4000;

let nextKey = 1;

export interface SessionInfo {
  key: number;
  sandboxId: string;
  title: string;
  pid: number;
  state: SessionState;
  exitCode: number | null;
  error: string;
  connects: number;
  cols: number;
  rows: number;
  /** Input frames and bytes sent so far (keystrokes are batched). */
  framesSent: number;
  bytesSent: number;
  /** Keystrokes waiting for their batch (or for the socket). */
  pendingBytes: number;
}

export class TerminalSession {
  readonly key = nextKey++;
  readonly sandboxId: string;
  title: string;
  pid: number;
  state: SessionState = 'idle';
  exitCode: number | null = null;
  error = '';
  /** How many times a socket reached the open state (1 on first connect). */
  connects = 0;
  framesSent = 0;
  bytesSent = 0;

  readonly term: Terminal;
  readonly element: HTMLDivElement;
  private readonly fitAddon = new FitAddon();
  private ws: WebSocket | null = null;
  private opened = false;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private flushTimer: number | undefined;
  private retryTimer: number | undefined;
  private retries = 0;
  private disposed = false;
  private readonly encoder = new TextEncoder();
  private readonly listeners = new Set<() => void>();
  private readonly resizeObserver: ResizeObserver;
  private lastSize = { w: 0, h: 0 };
  private droppedByTest = false;

  constructor(sandboxId: string, title: string, pid = 0, size?: { cols: number; rows: number }) {
    this.sandboxId = sandboxId;
    this.title = title;
    this.pid = pid;
    this.element = document.createElement('div');
    this.element.className = 'term-host';
    this.element.dataset.session = String(this.key);
    this.term = new Terminal({
      ...(size && size.cols > 0 && size.rows > 0 ? { cols: size.cols, rows: size.rows } : {}),
      cursorBlink: true,
      scrollback: 20000,
      fontFamily: 'ui-monospace, "JetBrains Mono", "DejaVu Sans Mono", Menlo, Consolas, monospace',
      fontSize: 13,
      lineHeight: 1.15,
      allowProposedApi: false,
      theme: {
        background: '#101614',
        foreground: '#d9e4df',
        cursor: '#8fd1b8',
        selectionBackground: '#2f6f5e80',
      },
    });
    this.term.loadAddon(this.fitAddon);
    this.term.onData((data) => this.input(this.encoder.encode(data)));
    this.term.onBinary((data) => {
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      this.input(bytes);
    });
    this.term.onResize(({ cols, rows }) => {
      this.sendControl({ type: 'resize', cols, rows });
      if (this.pid > 0) persist(this.sandboxId);
    });
    this.resizeObserver = new ResizeObserver(() => this.fit());
    this.resizeObserver.observe(this.element);
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed() {
    for (const fn of this.listeners) fn();
  }

  private setState(state: SessionState, error = this.error) {
    this.state = state;
    this.error = error;
    this.changed();
  }

  info(): SessionInfo {
    return {
      key: this.key,
      sandboxId: this.sandboxId,
      title: this.title,
      pid: this.pid,
      state: this.state,
      exitCode: this.exitCode,
      error: this.error,
      connects: this.connects,
      cols: this.term.cols,
      rows: this.term.rows,
      framesSent: this.framesSent,
      bytesSent: this.bytesSent,
      pendingBytes: this.pendingBytes,
    };
  }

  /** Puts the terminal into container (moving it there if it was elsewhere). */
  mount(container: HTMLElement) {
    if (this.disposed) return;
    if (this.element.parentElement !== container) container.appendChild(this.element);
    if (!this.opened) {
      this.term.open(this.element);
      this.opened = true;
    }
    this.fit();
    // A session brought back after a page load reattaches at once, shown or
    // not: while no one reads its PTY, the shell's output would stall.
    if (this.state === 'idle' && this.pid > 0) this.connect();
  }

  unmount(container: HTMLElement) {
    if (this.element.parentElement === container) container.removeChild(this.element);
  }

  /**
   * Fits the terminal to its element while it is visible, and starts the
   * session the first time it is: the PTY then begins at the right size.
   */
  fit() {
    if (!this.opened || this.disposed) return;
    const w = this.element.clientWidth;
    const h = this.element.clientHeight;
    if (w === 0 || h === 0) return; // hidden: keep the last size
    if (w !== this.lastSize.w || h !== this.lastSize.h) {
      this.lastSize = { w, h };
      try {
        this.fitAddon.fit();
      } catch {
        // the renderer is not ready yet; the next resize fits it
      }
    }
    if (this.state === 'idle') this.connect();
  }

  focus() {
    this.term.focus();
  }

  /** Opens the socket: a new shell, or the same PTY again when pid is known. */
  connect() {
    if (this.disposed || this.state === 'exited') return;
    window.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      detach(old);
      old.close(1000, 'reconnecting');
    }
    this.setState(this.connects > 0 || this.pid ? 'reconnecting' : 'connecting', '');
    const ws = new WebSocket(ptyURL(this.sandboxId, this.term.cols, this.term.rows, this.pid || undefined));
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let started = false;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      if (typeof ev.data !== 'string') {
        this.term.write(new Uint8Array(ev.data as ArrayBuffer));
        return;
      }
      let msg: { type?: string; pid?: number; exit_code?: number; message?: string };
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === 'started') {
        started = true;
        if (msg.pid) this.pid = msg.pid;
        this.retries = 0;
        this.connects++;
        this.setState('open', '');
        // The server started the PTY at the size in the URL; make sure it
        // matches what the terminal is now, then send what was typed meanwhile.
        this.sendControl({ type: 'resize', cols: this.term.cols, rows: this.term.rows });
        this.flush();
        persist(this.sandboxId);
      } else if (msg.type === 'exit') {
        this.exitCode = typeof msg.exit_code === 'number' ? msg.exit_code : null;
        this.setState('exited', '');
        this.term.write(
          `\r\n\x1b[2m[session ended${this.exitCode === null ? '' : `, exit code ${this.exitCode}`}]\x1b[0m\r\n`,
        );
        persist(this.sandboxId);
      } else if (msg.type === 'error' && msg.message) {
        this.error = msg.message;
        this.changed();
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.disposed || this.state === 'exited') return;
      const reason = ev.reason || (started ? 'the connection was lost' : 'could not connect');
      // 1008 (policy: bad token, no access) and 1011 (the server gave up,
      // e.g. the sandbox is not running or the PTY is gone) are answers, not
      // accidents: say so and leave reconnecting to the user.
      const byTest = this.droppedByTest;
      this.droppedByTest = false;
      const answered = !byTest && (ev.code === 1008 || ev.code === 1011 || ev.code === 1000);
      if (!answered && this.pid && this.retries < RETRY_DELAYS_MS.length) {
        const delay = RETRY_DELAYS_MS[this.retries];
        this.retries++;
        this.setState('reconnecting', reason);
        this.retryTimer = window.setTimeout(() => this.connect(), delay);
        return;
      }
      this.setState('dropped', `${reason}${ev.code && ev.code !== 1006 ? ` (${ev.code})` : ''}`);
    };
  }

  /** Reconnects now, by hand: reattaches to the same PTY when it has one. */
  reconnect() {
    this.retries = 0;
    if (this.state === 'exited') return;
    this.connect();
  }

  /** For tests: closes the socket as a network drop would, without exit. */
  dropForTest() {
    if (!this.ws) return;
    this.droppedByTest = true;
    this.ws.close(TEST_DROP_CODE, 'dropped by test');
  }

  private input(bytes: Uint8Array) {
    if (this.state === 'exited' || this.disposed) return;
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    while (this.pendingBytes > MAX_PENDING_BYTES && this.pending.length > 1) {
      this.pendingBytes -= this.pending.shift()!.length;
    }
    if (this.flushTimer === undefined) {
      this.flushTimer = window.setTimeout(() => {
        this.flushTimer = undefined;
        this.flush();
      }, INPUT_BATCH_MS);
    }
  }

  /** Sends what is buffered now, without waiting for the batch timer. */
  flushNow() {
    window.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.flush();
  }

  /** Sends all buffered keystrokes as one binary frame, in order. */
  private flush() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.state !== 'open' || this.pending.length === 0) return;
    const out = new Uint8Array(this.pendingBytes);
    let off = 0;
    for (const chunk of this.pending) {
      out.set(chunk, off);
      off += chunk.length;
    }
    this.pending = [];
    this.pendingBytes = 0;
    ws.send(out);
    this.framesSent++;
    this.bytesSent += out.length;
  }

  private sendControl(msg: object) {
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN && this.state === 'open') ws.send(JSON.stringify(msg));
  }

  /** The terminal's text, one entry per logical line (wrapped rows joined). */
  lines(): string[] {
    const buf = this.term.buffer.active;
    const out: string[] = [];
    for (let i = 0; i < buf.length; i++) {
      const line = buf.getLine(i);
      if (!line) continue;
      const text = line.translateToString(true);
      if (line.isWrapped && out.length > 0) out[out.length - 1] += text;
      else out.push(text);
    }
    while (out.length > 0 && out[out.length - 1] === '') out.pop();
    return out;
  }

  /**
   * Ends the session: the shell is hung up (best effort) so no PTY is left
   * behind in the sandbox, and the terminal is disposed.
   */
  close() {
    if (this.disposed) return;
    const pid = this.pid;
    const running = this.state !== 'exited';
    this.disposed = true;
    window.clearTimeout(this.retryTimer);
    window.clearTimeout(this.flushTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      detach(ws);
      ws.close(1000, 'closed');
    }
    if (running && pid > 0) {
      api.exec(this.sandboxId, '/bin/sh', ['-c', `kill -HUP ${pid}`], 10).catch(() => {});
    }
    this.resizeObserver.disconnect();
    this.term.dispose();
    this.element.remove();
    this.changed();
  }

  /** Forgets the session without touching its PTY (the sandbox went away). */
  discard() {
    if (this.disposed) return;
    this.disposed = true;
    window.clearTimeout(this.retryTimer);
    window.clearTimeout(this.flushTimer);
    if (this.ws) {
      detach(this.ws);
      this.ws.close(1000, 'closed');
      this.ws = null;
    }
    this.resizeObserver.disconnect();
    this.term.dispose();
    this.element.remove();
  }
}

function detach(ws: WebSocket) {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
}

// ---- the sessions of each sandbox ------------------------------------------

const bySandbox = new Map<string, TerminalSession[]>();
const storeListeners = new Set<() => void>();
const STORE_KEY = (id: string) => `wrenn.terminals.${id}`;

function emitStore() {
  for (const fn of storeListeners) fn();
}

export function subscribeSessions(fn: () => void): () => void {
  storeListeners.add(fn);
  return () => storeListeners.delete(fn);
}

/**
 * The sandbox's sessions. On the first call after a page load it brings back
 * the sessions this browser tab had (their PTYs kept running in the sandbox),
 * so a refresh reattaches instead of starting new shells.
 */
export function sessionsOf(sandboxId: string): TerminalSession[] {
  let list = bySandbox.get(sandboxId);
  if (!list) {
    list = [];
    bySandbox.set(sandboxId, list);
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORE_KEY(sandboxId)) || '[]') as SavedSession[];
      for (const s of saved) {
        if (s.pid > 0) list.push(new TerminalSession(sandboxId, s.title, s.pid, { cols: s.cols, rows: s.rows }));
      }
    } catch {
      // nothing usable saved
    }
  }
  return list;
}

interface SavedSession {
  title: string;
  pid: number;
  cols: number;
  rows: number;
}

function persist(sandboxId: string) {
  const list = bySandbox.get(sandboxId) ?? [];
  const saved: SavedSession[] = list
    .filter((s) => s.pid > 0 && s.state !== 'exited')
    .map((s) => ({ title: s.title, pid: s.pid, cols: s.term.cols, rows: s.term.rows }));
  sessionStorage.setItem(STORE_KEY(sandboxId), JSON.stringify(saved));
}

export function newSession(sandboxId: string): TerminalSession {
  const list = sessionsOf(sandboxId);
  const used = new Set(list.map((s) => s.title));
  let n = 1;
  while (used.has(`Shell ${n}`)) n++;
  const s = new TerminalSession(sandboxId, `Shell ${n}`);
  list.push(s);
  emitStore();
  return s;
}

export function closeSession(s: TerminalSession) {
  const list = sessionsOf(s.sandboxId);
  const i = list.indexOf(s);
  if (i >= 0) list.splice(i, 1);
  s.close();
  persist(s.sandboxId);
  emitStore();
}

/** Drops every session of a sandbox that has ended for good. */
export function forgetSandbox(sandboxId: string) {
  const list = bySandbox.get(sandboxId);
  if (!list) return;
  for (const s of list) s.discard();
  bySandbox.delete(sandboxId);
  sessionStorage.removeItem(STORE_KEY(sandboxId));
  emitStore();
}

// Keystrokes still waiting for their batch go out before the page unloads.
window.addEventListener('pagehide', () => {
  for (const list of bySandbox.values()) for (const s of list) s.flushNow();
});

// ---- a hook for tests and debugging ------------------------------------------

declare global {
  interface Window {
    __wrennTerminals?: {
      list(sandboxId?: string): SessionInfo[];
      lines(key: number): string[];
      text(key: number): string;
      drop(key: number): void;
    };
  }
}

function find(key: number): TerminalSession {
  for (const list of bySandbox.values()) for (const s of list) if (s.key === key) return s;
  throw new Error(`no terminal session ${key}`);
}

window.__wrennTerminals = {
  list(sandboxId?: string) {
    const out: SessionInfo[] = [];
    for (const [id, list] of bySandbox) if (!sandboxId || id === sandboxId) for (const s of list) out.push(s.info());
    return out;
  },
  lines: (key) => find(key).lines(),
  text: (key) => find(key).lines().join('\n'),
  drop: (key) => find(key).dropForTest(),
};
