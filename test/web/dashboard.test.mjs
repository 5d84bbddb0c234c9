// Drives the web dashboard in a real headless Chromium against a real
// platform: `wrenn dev` (control plane, in-process host agent with QEMU
// sandboxes, private PostgreSQL) serving the embedded dashboard.
//
// Needs bin/wrenn built after the dashboard (`cd web && npm ci && npm run
// build`, then `go build -o bin/wrenn ./cmd/wrenn`), Debian's chromium at
// /usr/bin/chromium, and playwright-core from web/node_modules. WRENN_BIN
// overrides the binary; WRENN_IMAGE_CACHE (default /var/tmp/wrenn-test-images)
// shares guest images between runs. Screenshots and the platform's log go to
// test/web/artifacts/.
//
// The tests run in order and share one browser page and one sandbox, as a
// person at the dashboard would: each builds on the state the one before
// left.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const require = createRequire(import.meta.url);
const { chromium } = require(join(root, 'web', 'node_modules', 'playwright-core'));

const wrennBin = process.env.WRENN_BIN || join(root, 'bin', 'wrenn');
const artifacts = join(here, 'artifacts');
const chromiumPath = process.env.WRENN_CHROMIUM || '/usr/bin/chromium';
const WIDE = { width: 1366, height: 860 };
const NARROW = { width: 420, height: 860 };

let dev; // the wrenn dev process
let devExit = null;
let dataDir;
let logPath;
let ready; // what wrenn dev wrote to its ready file
let browser;
let context;
let page;
let sandboxId = '';
const created = []; // every sandbox the tests made, killed at the end
const keys = {}; // terminal session keys: { one, two }
const pids = {};
const consoleErrors = [];
const refused = []; // API answers of 400 and above seen by the page

// ---- helpers ------------------------------------------------------------------

/** Polls cond (async) until it returns a truthy value or the deadline passes. */
async function until(cond, what, timeoutMs = 30000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs)); // polling interval
  }
}

async function apiCall(method, path, body) {
  const res = await fetch(`${ready.api_url}${path}`, {
    method,
    headers: { 'X-API-Key': ready.api_key, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

/** Runs a shell command in the sandbox through the API's exec. */
async function sh(command, timeout_seconds = 60) {
  const res = await apiCall('POST', `/v1/sandboxes/${sandboxId}/exec`, {
    cmd: '/bin/sh',
    args: ['-c', command],
    timeout_seconds,
  });
  assert.equal(res.status, 200, `exec ${command}: ${res.text}`);
  assert.equal(res.json.exit_code, 0, `exec ${command}: exit ${res.json.exit_code}, stderr ${res.json.stderr}`);
  return res.json.stdout;
}

async function shot(name, opts = {}) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: false, ...opts });
}

const sessions = () => page.evaluate((id) => window.__wrennTerminals.list(id), sandboxId);
const session = async (key) => (await sessions()).find((s) => s.key === key);
const lines = (key) => page.evaluate((k) => window.__wrennTerminals.lines(k), key);

/** Waits until the session's terminal has a line for which pred holds. */
async function waitForLine(key, pred, what, timeoutMs = 30000) {
  try {
    return await until(async () => (await lines(key)).find(pred), `terminal ${key} to show ${what}`, timeoutMs);
  } catch (err) {
    const tail = await lines(key).then((l) => l.slice(-12).join('\n  '), () => '(unreadable)');
    const info = await session(key).then((s) => JSON.stringify(s), () => '');
    err.message += `\nsession ${info}; its last lines:\n  ${tail}`;
    throw err;
  }
}

async function waitOpen(key, what = 'open') {
  return until(async () => {
    const s = await session(key);
    return s && s.state === 'open' && s.pid > 0 ? s : null;
  }, `session ${key} ${what}`);
}

/**
 * After a page load, waits for the two sessions to reattach to their PTYs
 * (the page keeps their pids) and learns their new keys.
 */
async function reattached() {
  const list = await until(async () => {
    const l = await sessions();
    return l.length === 2 && l.every((s) => s.state === 'open') ? l : null;
  }, 'both sessions to reattach after the page load');
  assert.deepEqual(list.map((s) => s.pid).sort(), [pids.one, pids.two].sort(), 'the same PTYs');
  keys.one = list.find((s) => s.pid === pids.one).key;
  keys.two = list.find((s) => s.pid === pids.two).key;
  return list;
}

/** Shows the session's tab and puts the keyboard focus in its terminal. */
async function focusSession(key) {
  await page.locator(`.term-tab[data-session="${key}"] .term-tab-label`).click();
  await page.locator(`.term-view[data-session="${key}"]`).waitFor({ state: 'visible' });
  await page.locator(`.term-view[data-session="${key}"] .xterm-helper-textarea`).focus();
}

async function typeLine(key, text) {
  await focusSession(key);
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
}

/** Pastes text into the session's terminal as the browser does on Ctrl+V. */
async function paste(key, text) {
  await focusSession(key);
  await page.evaluate(
    ({ k, t }) => {
      const ta = document.querySelector(`.term-view[data-session="${k}"] .xterm-helper-textarea`);
      const dt = new DataTransfer();
      dt.setData('text/plain', t);
      ta.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    },
    { k: key, t: text },
  );
}

async function clickTab(name) {
  await page.getByRole('tab', { name, exact: true }).click();
}

async function noHorizontalOverflow() {
  return page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    inner: window.innerWidth,
  }));
}

function devLogTail() {
  try {
    return readFileSync(logPath, 'utf8').split('\n').slice(-40).join('\n');
  } catch {
    return '';
  }
}

// ---- the platform and the browser ------------------------------------------------

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  assert.ok(
    existsSync(join(root, 'web', 'dist', 'index.html')),
    'web/dist is not built: run `cd web && npm ci && npm run build`, then rebuild bin/wrenn',
  );
  assert.ok(existsSync(wrennBin), `${wrennBin} is missing: run \`go build -o bin/wrenn ./cmd/wrenn\``);
  assert.ok(existsSync(chromiumPath), `${chromiumPath} is missing: install Debian's chromium package`);

  dataDir = mkdtempSync(join(tmpdir(), 'wrenn-web-test-'));
  chmodSync(dataDir, 0o755); // the private PostgreSQL runs as the postgres user
  const readyFile = join(dataDir, 'ready.json');
  logPath = join(artifacts, 'wrenn-dev.log');
  const log = openSync(logPath, 'w');
  dev = spawn(
    wrennBin,
    ['dev', '-listen', '127.0.0.1:0', '-data-dir', join(dataDir, 'data'), '-ready-file', readyFile],
    {
      stdio: ['ignore', log, log],
      env: { ...process.env, WRENN_IMAGE_CACHE: process.env.WRENN_IMAGE_CACHE || '/var/tmp/wrenn-test-images' },
    },
  );
  closeSync(log);
  dev.on('exit', (code, signal) => {
    devExit = `code=${code} signal=${signal}`;
  });
  // Should the run be cut short, the platform still shuts down cleanly.
  process.on('exit', () => {
    if (!devExit) dev.kill('SIGTERM');
  });
  // The first run builds the guest images into the cache; later runs reuse them.
  const deadline = Date.now() + 15 * 60 * 1000;
  while (!ready) {
    if (devExit) assert.fail(`wrenn dev exited early (${devExit}):\n${devLogTail()}`);
    if (Date.now() > deadline) assert.fail(`wrenn dev was not ready in 15 minutes:\n${devLogTail()}`);
    if (existsSync(readyFile)) {
      try {
        ready = JSON.parse(readFileSync(readyFile, 'utf8'));
      } catch {
        // still being written
      }
    }
    if (!ready) await new Promise((r) => setTimeout(r, 200)); // polling interval
  }
  for (const k of ['api_url', 'dashboard_url', 'api_key', 'admin_email', 'admin_password']) {
    assert.ok(ready[k], `the ready file lacks ${k}: ${JSON.stringify(ready)}`);
  }

  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox'] });
  context = await browser.newContext({ viewport: WIDE, acceptDownloads: true });
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => consoleErrors.push(`page error: ${err.message}`));
  page.on('response', async (res) => {
    if (res.status() < 400) return;
    let line = `${res.status()} ${res.request().method()} ${new URL(res.url()).pathname}`;
    if (res.status() >= 500) line += `: ${(await res.text().catch(() => '')).trim()}`;
    refused.push(line);
  });
});

after(async () => {
  if (ready) {
    for (const id of created) await apiCall('DELETE', `/v1/sandboxes/${id}`).catch(() => {});
  }
  await browser?.close().catch(() => {});
  if (dev && !devExit) {
    const exited = new Promise((r) => dev.once('exit', r));
    dev.kill('SIGTERM');
    const timer = setTimeout(() => dev.kill('SIGKILL'), 60000);
    await exited;
    clearTimeout(timer);
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  if (consoleErrors.length) console.log(`browser console errors:\n  ${consoleErrors.join('\n  ')}`);
  if (refused.length) console.log(`refused requests (expected ones included):\n  ${refused.join('\n  ')}`);
});

// ---- the tests ----------------------------------------------------------------

// A failing test leaves a screenshot of the page as it was.
let failures = 0;
afterEach(async (t) => {
  if (page && t.passed === false) {
    failures++;
    await shot(`failure-${failures}`).catch(() => {});
  }
});

test('sign in: a wrong password is refused with the server message, then the right one signs in', async () => {
  await page.goto(ready.dashboard_url);
  const form = page.getByRole('form', { name: 'Sign in' });
  await form.waitFor();
  await shot('signin');
  await page.fill('input[name=email]', ready.admin_email);
  await page.fill('input[name=password]', 'not the password');
  await page.click('button[type=submit]');
  const alert = form.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.textContent(), /\(401\)/, 'the error shows the status');
  await page.fill('input[name=password]', ready.admin_password);
  await page.click('button[type=submit]');
  await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/sandboxes');
  const stored = await page.evaluate(() => localStorage.getItem('wrenn.session'));
  assert.ok(stored && JSON.parse(stored).token, 'the session token is kept');
});

test('create a sandbox from minimal', { timeout: 180000 }, async () => {
  await page.getByRole('button', { name: 'New sandbox' }).click();
  const form = page.getByRole('form', { name: 'New sandbox' });
  await form.waitFor();
  await until(() => form.locator('select[name=template] option[value=minimal]').count(), 'the templates to load');
  await form.locator('select[name=template]').selectOption('minimal');
  await form.locator('input[name=vcpus]').fill('1');
  await form.locator('input[name=memory_mib]').fill('256');
  await form.locator('input[name=timeout_seconds]').fill('1800');
  await shot('sandbox-create');
  await form.getByRole('button', { name: 'Create sandbox' }).click();
  await page.waitForURL(/\/sandboxes\/[^/?]+$/, { timeout: 120000 });
  sandboxId = decodeURIComponent(new URL(page.url()).pathname.split('/').pop());
  assert.match(sandboxId, /^sb-/);
  created.push(sandboxId);
  await page.locator('.page-header .badge-running').waitFor({ timeout: 120000 });
  // Metrics are polled from the API while the overview is shown.
  await page.locator('.meter[data-metric=memory] [role=meter]').waitFor({ timeout: 30000 });
  await shot('sandbox-overview');

  await page.goto(`${ready.dashboard_url.replace(/\/$/, '')}/sandboxes`);
  const row = page.locator(`tr[data-sandbox="${sandboxId}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /running/);
  assert.match(await row.textContent(), /minimal/);
  assert.match(await row.textContent(), /1 vCPU · 256 MiB/);
  await shot('sandboxes');
  await row.getByRole('link', { name: sandboxId }).click();
  await page.locator('.page-header .badge-running').waitFor();
});

test('two terminal sessions, each running its own command', { timeout: 120000 }, async () => {
  await clickTab('Terminal');
  assert.equal(new URL(page.url()).searchParams.get('tab'), 'terminal');
  // The first visit opens a shell by itself.
  const first = await until(async () => (await sessions())[0], 'the first session');
  keys.one = first.key;
  pids.one = (await waitOpen(keys.one)).pid;
  await page.getByRole('button', { name: '+ New session' }).click();
  const second = await until(async () => (await sessions()).find((s) => s.key !== keys.one), 'the second session');
  keys.two = second.key;
  pids.two = (await waitOpen(keys.two)).pid;
  assert.notEqual(pids.one, pids.two, 'two sessions are two shells');

  await typeLine(keys.one, 'echo one-$((6*7))');
  await waitForLine(keys.one, (l) => l.trim() === 'one-42', 'one-42');
  await typeLine(keys.two, 'echo two-$((7*8))');
  await waitForLine(keys.two, (l) => l.trim() === 'two-56', 'two-56');
  assert.ok(!(await lines(keys.one)).some((l) => l.trim() === 'two-56'), 'output stays in its own session');
  assert.ok(!(await lines(keys.two)).some((l) => l.trim() === 'one-42'), 'output stays in its own session');
  await shot('sandbox-terminal');
});

test('switching to files and back keeps both sessions and their output', async () => {
  const before = await sessions();
  await clickTab('Files');
  assert.equal(new URL(page.url()).searchParams.get('tab'), 'files');
  await page.getByRole('table', { name: 'Files' }).or(page.locator('.files .empty')).first().waitFor();
  assert.equal(await page.locator('.term-view').first().isVisible(), false, 'the terminal is hidden, not shown');
  assert.equal(await page.locator('.term-view').count(), 2, 'the terminals stay mounted');
  await shot('sandbox-files');
  await clickTab('Overview');
  await clickTab('Terminal');
  const after = await sessions();
  assert.deepEqual(
    after.map((s) => [s.key, s.pid, s.connects]),
    before.map((s) => [s.key, s.pid, s.connects]),
    'same sessions, never reconnected',
  );
  assert.ok((await lines(keys.one)).some((l) => l.trim() === 'one-42'), 'scrollback of session one kept');
  assert.ok((await lines(keys.two)).some((l) => l.trim() === 'two-56'), 'scrollback of session two kept');
  await typeLine(keys.one, 'echo back-$((2+3))');
  await waitForLine(keys.one, (l) => l.trim() === 'back-5', 'back-5');
});

test('a refresh on ?tab=terminal lands on the terminal and reattaches the same shells', async () => {
  await typeLine(keys.one, 'BEFORE_RELOAD=yes$((1+1)); echo "set-$BEFORE_RELOAD"');
  await waitForLine(keys.one, (l) => l.trim() === 'set-yes2', 'the variable set');
  await page.reload();
  assert.equal(new URL(page.url()).searchParams.get('tab'), 'terminal');
  await page.locator('[role=tab][aria-selected=true]', { hasText: 'Terminal' }).waitFor();
  await page.locator('.panel-terminal').waitFor({ state: 'visible' });
  await reattached();
  await typeLine(keys.one, 'echo "reload=$BEFORE_RELOAD"');
  await waitForLine(keys.one, (l) => l.trim() === 'reload=yes2', 'the shell variable set before the refresh');
});

test('a dropped WebSocket reconnects to the same PTY', async () => {
  await typeLine(keys.one, 'MARK=alpha$((1+1))');
  await typeLine(keys.one, 'echo "set=$MARK"');
  await waitForLine(keys.one, (l) => l.trim() === 'set=alpha2', 'set=alpha2');
  const before = await session(keys.one);

  // Drop the socket as a network failure would; the session reattaches by pid.
  await page.evaluate((k) => window.__wrennTerminals.drop(k), keys.one);
  const again = await until(async () => {
    const s = await session(keys.one);
    return s.state === 'open' && s.connects > before.connects ? s : null;
  }, 'the session to reconnect');
  assert.equal(again.pid, before.pid, 'reattached to the same PTY');
  await typeLine(keys.one, 'echo "after-drop=$MARK"');
  await waitForLine(keys.one, (l) => l.trim() === 'after-drop=alpha2', 'the same shell after the drop');

  // The Reconnect button does the same by hand.
  await focusSession(keys.one);
  await page.locator(`.term-bar[data-session="${keys.one}"]`).getByRole('button', { name: 'Reconnect' }).click();
  const manual = await until(async () => {
    const s = await session(keys.one);
    return s.state === 'open' && s.connects > again.connects ? s : null;
  }, 'the session to reconnect by hand');
  assert.equal(manual.pid, before.pid);
  await typeLine(keys.one, 'echo "manual=$MARK"');
  await waitForLine(keys.one, (l) => l.trim() === 'manual=alpha2', 'the same shell after reconnecting by hand');
});

test('a session that exits says so, and closing a session ends its shell', async () => {
  const known = new Set((await sessions()).map((s) => s.key));
  await page.getByRole('button', { name: '+ New session' }).click();
  const third = await until(async () => (await sessions()).find((s) => !known.has(s.key)), 'a third session');
  await waitOpen(third.key);
  await typeLine(third.key, 'exit');
  await until(async () => (await session(third.key)).state === 'exited', 'the session to end');
  await waitForLine(third.key, (l) => l.includes('[session ended'), 'the end of the session');
  await page.locator(`.term-bar[data-session="${third.key}"]`, { hasText: 'ended' }).waitFor();
  await page.getByRole('button', { name: `Close ${third.title}` }).click();
  await until(async () => (await sessions()).length === 2, 'the ended session to close');

  await page.getByRole('button', { name: '+ New session' }).click();
  const fourth = await until(async () => (await sessions()).find((s) => !known.has(s.key)), 'a fourth session');
  const { pid } = await waitOpen(fourth.key);
  assert.equal((await sh(`[ -d /proc/${pid} ] && echo running || echo gone`)).trim(), 'running');
  await page.getByRole('button', { name: `Close ${fourth.title}` }).click();
  await until(async () => (await sessions()).length === 2, 'the session to close');
  await until(
    async () => (await sh(`[ -d /proc/${pid} ] && echo running || echo gone`)).trim() === 'gone',
    'the closed session\'s shell to end',
  );
  const saved = await page.evaluate((id) => JSON.parse(sessionStorage.getItem(`wrenn.terminals.${id}`)), sandboxId);
  assert.deepEqual(saved.map((s) => s.pid).sort(), [pids.one, pids.two].sort(), 'only the open sessions are kept');
});

test('a 5,000-character paste and fast typing arrive intact and in order', { timeout: 120000 }, async () => {
  // Lines of 100 characters (the terminal's line discipline holds at most
  // 4095 per line), numbered so that any reordering changes the checksum.
  let text = '';
  for (let i = 0; i < 50; i++) {
    const body = randomBytes(96).toString('base64').replace(/[^A-Za-z0-9]/g, 'x');
    text += `${String(i).padStart(4, '0')} ${body}`.slice(0, 99) + '\n';
  }
  assert.equal(text.length, 5000);
  assert.ok(text.endsWith('\n'));

  await typeLine(keys.two, 'cat > /tmp/paste.txt');
  await until(async () => (await session(keys.two)).pendingBytes === 0, 'the command to be sent');
  const sentBefore = await session(keys.two);
  await paste(keys.two, text);
  const sentAfter = await until(async () => {
    const s = await session(keys.two);
    return s.bytesSent >= sentBefore.bytesSent + text.length ? s : null;
  }, 'the paste to be sent');
  assert.equal(sentAfter.framesSent - sentBefore.framesSent, 1, 'the paste went out as one frame');
  await page.keyboard.press('Control+D');
  await typeLine(keys.two, 'echo "pasted=$(wc -c < /tmp/paste.txt)"');
  await waitForLine(keys.two, (l) => /^pasted=\s*\d+/.test(l.trim()), 'the paste to be written', 60000);
  assert.equal(await sh('wc -c < /tmp/paste.txt').then((s) => s.trim()), '5000');
  const want = createHash('sha256').update(text).digest('hex');
  assert.equal((await sh('sha256sum /tmp/paste.txt')).split(/\s+/)[0], want, 'the pasted bytes, in order');

  // Typing: every key is its own input event, batched by the dashboard.
  const typed = Array.from({ length: 600 }, (_, i) => 'abcdefghijklmnopqrstuvwxyz0123456789'[(i * 7) % 36]).join('');
  const typingBefore = await session(keys.two);
  await typeLine(keys.two, `printf '%s' '${typed}' > /tmp/typed.txt`);
  const typingAfter = await until(async () => {
    const s = await session(keys.two);
    return s.bytesSent >= typingBefore.bytesSent + typed.length + 20 ? s : null;
  }, 'the typing to be sent');
  console.log(
    `typed ${typingAfter.bytesSent - typingBefore.bytesSent} bytes key by key in ${typingAfter.framesSent - typingBefore.framesSent} frames`,
  );
  await typeLine(keys.two, 'echo "typed=$(wc -c < /tmp/typed.txt)"');
  await waitForLine(keys.two, (l) => l.trim() === 'typed=600', 'typed=600', 60000);
  assert.equal(await sh('cat /tmp/typed.txt'), typed);
});

test('ls -laR output renders without loss', { timeout: 300000 }, async () => {
  // Directories of the minimal image that give thousands of lines; /proc and
  // /sys are left out, as their listings change while they are read.
  const dirs = process.env.WRENN_WEB_LS_DIRS || '/bin /etc /lib /sbin /sys /usr /var';
  const want = (await sh(`ls -laR ${dirs} 2>/dev/null; true`, 120)).replace(/\n$/, '').split('\n');
  assert.ok(want.length >= 1000, `ls -laR ${dirs} gives ${want.length} lines; want thousands`);
  // One command line: typing `clear` on its own and the listing right after
  // it races the shell's next prompt, whose cursor-position query (ESC[6n)
  // xterm answers; an answer arriving while ls runs is echoed into its
  // output by the tty.
  await typeLine(keys.one, `clear; printf '%s\\n' "LS""BEGIN"; ls -laR ${dirs} 2>/dev/null; printf '%s\\n' "LS""END"`);
  await waitForLine(keys.one, (l) => l === 'LSEND', 'the end of the listing', 240000);
  const got = await lines(keys.one);
  const start = got.lastIndexOf('LSBEGIN');
  const end = got.lastIndexOf('LSEND');
  assert.ok(start >= 0 && end > start, 'both markers are in the buffer');
  const shown = got.slice(start + 1, end);
  assert.equal(shown.length, want.length, `the terminal shows ${shown.length} lines, ls gives ${want.length}`);
  // Same lines in the same order (spacing aside: the terminal trims the ends
  // of lines, and ls may align columns differently on a terminal).
  const norm = (l) => l.replace(/\s+/g, ' ').trim();
  const firstDiff = shown.findIndex((l, i) => norm(l) !== norm(want[i]));
  assert.equal(firstDiff, -1, `line ${firstDiff} differs: ${JSON.stringify(shown[firstDiff])} vs ${JSON.stringify(want[firstDiff])}`);
  console.log(`ls -laR ${dirs}: ${want.length} lines rendered`);
});

test('upload a file and download it again', { timeout: 120000 }, async () => {
  await clickTab('Files');
  await page.locator('.files-table, .files .empty').first().waitFor();
  const content = randomBytes(300 * 1024);
  content.write('wrenn upload test\n', 0);
  await page.locator('input[name=path]').fill('/tmp');
  await page.locator('.path-form').getByRole('button', { name: 'Go' }).click();
  await page.locator('.path-crumbs', { hasText: 'tmp' }).waitFor();
  await page.locator('input[type=file][name=upload]').setInputFiles({
    name: 'upload.bin',
    mimeType: 'application/octet-stream',
    buffer: content,
  });
  const row = page.locator('tr[data-path="/tmp/upload.bin"]');
  await row.waitFor({ timeout: 60000 });
  const want = createHash('sha256').update(content).digest('hex');
  assert.equal((await sh('sha256sum /tmp/upload.bin')).split(/\s+/)[0], want, 'the uploaded bytes in the sandbox');
  // The paste from the earlier test is listed here too.
  await page.locator('tr[data-path="/tmp/paste.txt"]').waitFor();
  await shot('sandbox-files-upload');

  const [download] = await Promise.all([
    page.waitForEvent('download'),
    row.getByRole('button', { name: 'Download upload.bin' }).click(),
  ]);
  assert.equal(download.suggestedFilename(), 'upload.bin');
  const got = readFileSync(await download.path());
  assert.equal(got.length, content.length);
  assert.ok(got.equals(content), 'the downloaded bytes are the uploaded ones');
});

test('API keys: create (shown once), use and revoke', async () => {
  await page.getByRole('link', { name: 'API keys' }).click();
  await page.getByRole('heading', { name: 'API keys' }).waitFor();
  const form = page.getByRole('form', { name: 'New API key' });
  await form.locator('input[name=key_name]').fill('web-test');
  await form.getByRole('button', { name: 'Create key' }).click();
  const secret = page.locator('[data-testid=new-key]');
  await secret.waitFor();
  const key = (await secret.textContent()).trim();
  assert.match(key, /^wrn_[0-9a-f]{40}$/);
  await page.locator('.new-key').getByRole('button', { name: 'Copy' }).click();
  await page.locator('.new-key').getByRole('button', { name: 'Copied' }).waitFor();
  await shot('api-keys');
  const me = await fetch(`${ready.api_url}/v1/me`, { headers: { 'X-API-Key': key } });
  assert.equal(me.status, 200, 'the new key works');

  await page.locator('.new-key').getByRole('button', { name: 'Done' }).click();
  assert.equal(await page.locator('[data-testid=new-key]').count(), 0, 'the key is not shown again');
  const row = page.locator('tr', { hasText: 'web-test' });
  await row.getByRole('button', { name: 'Revoke' }).click();
  await row.getByRole('button', { name: 'Revoke it' }).click();
  await until(async () => {
    const r = await fetch(`${ready.api_url}/v1/me`, { headers: { 'X-API-Key': key } });
    return r.status === 401;
  }, 'the revoked key to stop working');
  await until(
    async () => (await page.locator('tr', { hasText: 'web-test' }).count()) === 0 ||
      (await page.locator('tr', { hasText: 'web-test' }).locator('.badge', { hasText: 'revoked' }).count()) > 0,
    'the key list to show the revocation',
  );
});

test('templates: listed, and launching one opens the create form', async () => {
  await page.getByRole('link', { name: 'Templates' }).click();
  await page.getByRole('heading', { name: 'Templates' }).waitFor();
  const row = page.locator('tr[data-template=minimal]');
  await row.waitFor();
  assert.match(await row.textContent(), /image/);
  await shot('templates');
  await row.getByRole('button', { name: 'Launch' }).click();
  await page.getByRole('form', { name: 'New sandbox' }).waitFor();
  assert.equal(new URL(page.url()).searchParams.get('new'), 'minimal');
  assert.equal(await page.locator('select[name=template]').inputValue(), 'minimal');
});

test('the API reference is served at /docs', async () => {
  const base = ready.dashboard_url.replace(/\/$/, '');
  for (const path of ['/docs', '/docs/']) {
    await page.goto(base + path);
    await page.locator('.swagger-ui .info .title').waitFor({ timeout: 30000 });
  }
  await page.locator('.swagger-ui .opblock').first().waitFor();
  await shot('api-docs');
});

test('the API saying no is shown with its message', async () => {
  await page.goto(`${ready.dashboard_url.replace(/\/$/, '')}/sandboxes?new=no-such-template`);
  const form = page.getByRole('form', { name: 'New sandbox' });
  await form.waitFor();
  await form.locator('select[name=template]').selectOption('no-such-template');
  await form.getByRole('button', { name: 'Create sandbox' }).click();
  const alert = form.getByRole('alert');
  await alert.waitFor();
  const text = (await alert.textContent()).trim();
  assert.match(text, /\((400|404)\)$/, `the server's status is shown: ${text}`);
  assert.ok(text.length > 8, `the server's message is shown: ${text}`);
  await shot('error-message');

  await page.goto(`${ready.dashboard_url.replace(/\/$/, '')}/sandboxes/sb-doesnotexist`);
  await page.getByRole('heading', { name: 'Sandbox not found' }).waitFor();
});

test('a narrow window has no horizontal overflow', async () => {
  await page.setViewportSize(NARROW);
  const base = ready.dashboard_url.replace(/\/$/, '');
  const pages = [
    ['narrow-sandboxes', '/sandboxes', () => page.locator(`tr[data-sandbox="${sandboxId}"]`).waitFor()],
    ['narrow-sandbox-overview', `/sandboxes/${sandboxId}`, () => page.locator('.details').waitFor()],
    ['narrow-sandbox-terminal', `/sandboxes/${sandboxId}?tab=terminal`, reattached],
    ['narrow-sandbox-files', `/sandboxes/${sandboxId}?tab=files`, () => page.locator('.files-table, .files .empty').first().waitFor()],
    ['narrow-templates', '/templates', () => page.locator('tr[data-template=minimal]').waitFor()],
    ['narrow-api-keys', '/keys', () => page.getByRole('heading', { name: 'API keys' }).waitFor()],
  ];
  for (const [name, path, loaded] of pages) {
    await page.goto(base + path);
    await loaded();
    const m = await noHorizontalOverflow();
    await shot(name, { fullPage: true });
    assert.ok(m.scroll <= m.inner && m.body <= m.inner, `${path} overflows at ${NARROW.width}px: ${JSON.stringify(m)}`);
  }
  // The terminal fits the narrow window too, and follows it when it widens.
  await page.goto(`${base}/sandboxes/${sandboxId}?tab=terminal`);
  await reattached();
  await focusSession(keys.one);
  const s = await until(async () => {
    const x = await session(keys.one);
    return x.cols < 60 ? x : null;
  }, 'the terminal to fit the narrow window');
  assert.ok(s.cols < 60, `the terminal follows the window: ${s.cols} columns at ${NARROW.width}px`);
  await page.setViewportSize(WIDE);
  await until(async () => (await session(keys.one)).cols > s.cols, 'the terminal to widen with the window');
});

test('snapshot to a template, launch a sandbox from it, delete it', { timeout: 300000 }, async () => {
  const base = ready.dashboard_url.replace(/\/$/, '');
  const name = `web-snap-${randomBytes(3).toString('hex')}`;
  await page.goto(`${base}/sandboxes/${sandboxId}?tab=snapshot`);
  const form = page.getByRole('form', { name: 'Snapshot' });
  await form.locator('input[name=snapshot_name]').fill(name);
  await form.getByRole('button', { name: 'Create snapshot' }).click();
  const done = page.locator('.panel-snapshot .alert-ok');
  await done.waitFor({ timeout: 180000 });
  assert.match(await done.textContent(), new RegExp(`Template ${name} is ready`));
  await shot('sandbox-snapshot');

  await done.getByRole('link', { name: 'templates' }).click();
  const row = page.locator(`tr[data-template="${name}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /snapshot/);
  assert.match(await row.textContent(), /1 vCPU · 256 MiB/);
  await shot('templates-with-snapshot');

  // Launch: the form takes the snapshot's resources as they are.
  await row.getByRole('button', { name: 'Launch' }).click();
  const create = page.getByRole('form', { name: 'New sandbox' });
  await create.waitFor();
  await until(async () => (await create.locator('select[name=template]').inputValue()) === name, 'the template to be chosen');
  assert.ok(await create.locator('input[name=vcpus]').isDisabled(), 'a snapshot keeps its vCPUs');
  await create.getByRole('button', { name: 'Create sandbox' }).click();
  await page.waitForURL(/\/sandboxes\/[^/?]+$/, { timeout: 180000 });
  const child = decodeURIComponent(new URL(page.url()).pathname.split('/').pop());
  assert.notEqual(child, sandboxId);
  created.push(child);
  const header = page.locator('.page-header');
  await header.locator('.badge-running').waitFor({ timeout: 180000 });
  // The launched sandbox has the snapshot's disk: the upload is there.
  const res = await apiCall('POST', `/v1/sandboxes/${child}/exec`, {
    cmd: '/bin/sh',
    args: ['-c', 'wc -c < /tmp/upload.bin'],
    timeout_seconds: 60,
  });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.stdout.trim(), String(300 * 1024));
  await header.getByRole('button', { name: 'Kill' }).click();
  await header.getByRole('button', { name: 'Kill it' }).click();
  await header.locator('.badge-stopped').waitFor({ timeout: 60000 });

  await page.getByRole('link', { name: 'Templates' }).click();
  const again = page.locator(`tr[data-template="${name}"]`);
  await again.getByRole('button', { name: 'Delete' }).click();
  await again.getByRole('button', { name: 'Delete it' }).click();
  await again.waitFor({ state: 'detached' });
  const list = await apiCall('GET', '/v1/templates');
  assert.ok(!list.json.templates.some((t) => t.name === name), 'the snapshot is gone');
});

test('pause, resume and kill from the sandbox page', { timeout: 180000 }, async () => {
  const base = ready.dashboard_url.replace(/\/$/, '');
  await page.goto(`${base}/sandboxes/${sandboxId}`);
  const header = page.locator('.page-header');
  await header.locator('.badge-running').waitFor();
  await header.getByRole('button', { name: 'Pause' }).click();
  await header.locator('.badge-paused').waitFor({ timeout: 90000 });
  await shot('sandbox-paused');
  await header.getByRole('button', { name: 'Resume' }).click();
  await header.locator('.badge-running').waitFor({ timeout: 90000 });
  assert.equal((await sh('echo alive')).trim(), 'alive', 'the sandbox answers after resuming');

  await header.getByRole('button', { name: 'Kill' }).click();
  await header.getByRole('button', { name: 'Kill it' }).click();
  await header.locator('.badge-stopped').waitFor({ timeout: 60000 });
  const res = await apiCall('GET', `/v1/sandboxes/${sandboxId}`);
  assert.equal(res.json.state, 'stopped');
  assert.equal(res.json.reason, 'killed');
});

test('sign out returns to the sign-in page', async () => {
  const base = ready.dashboard_url.replace(/\/$/, '');
  await page.goto(`${base}/sandboxes`);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('form', { name: 'Sign in' }).waitFor();
  assert.equal(await page.evaluate(() => localStorage.getItem('wrenn.session')), null);
  await page.reload();
  await page.getByRole('form', { name: 'Sign in' }).waitFor();
});
