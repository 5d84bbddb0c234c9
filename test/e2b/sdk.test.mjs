// Drives a real envd with the stock `e2b` npm SDK, as an outside client would.
//
// envd runs on this host in host mode (-isnotfc) on a free port; the SDK is
// pointed at it with E2B_DEBUG=true and E2B_SANDBOX_URL. An access token is
// set through /init, so every SDK call also exercises X-Access-Token auth
// and signed file URLs.
//
// Run by `make test` with WRENN_ENVD_BIN set to the built envd binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Sandbox, CommandExitError, FileNotFoundError, FilesystemEventType } = require('../../tools/node_modules/e2b');

const envdBin = process.env.WRENN_ENVD_BIN;
const token = randomBytes(16).toString('hex');
let envd;
let envdExit;
let url;
let sbx;
let workdir;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitHealthy(base, deadlineMs) {
  const deadline = Date.now() + deadlineMs;
  let lastErr;
  while (Date.now() < deadline) {
    if (envdExit) throw new Error(`envd exited early: ${envdExit}`);
    try {
      const res = await fetch(`${base}/health`);
      if (res.status === 204) return;
      lastErr = new Error(`health answered ${res.status}`);
    } catch (err) {
      lastErr = err;
    }
    await new Promise((r) => setTimeout(r, 50)); // polling interval, not synchronisation
  }
  throw new Error(`envd did not become healthy: ${lastErr}`);
}

// until resolves once cond() holds, polling on the event loop; it fails
// the test with what was last seen when the deadline passes.
async function until(cond, what, deadlineMs = 10000) {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`timed out waiting for ${what}`);
}

before(async () => {
  assert.ok(envdBin, 'WRENN_ENVD_BIN must point at the envd binary (make test sets it)');
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  envd = spawn(envdBin, ['-isnotfc', '-no-cgroups', '-no-port-forward', '-port', String(port), '-log-level', 'warn'], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  envd.on('exit', (code, signal) => { envdExit = `code=${code} signal=${signal}`; });
  await waitHealthy(url, 15000);

  const init = await fetch(`${url}/init`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ accessToken: token, envVars: { WRENN_SDK_TEST: 'yes' } }),
  });
  assert.equal(init.status, 204, 'POST /init');

  process.env.E2B_DEBUG = 'true';
  process.env.E2B_SANDBOX_URL = url;
  process.env.E2B_API_KEY = 'e2b_0000';
  sbx = new Sandbox({ sandboxId: 'sdk-test', envdVersion: '0.6.13', envdAccessToken: token });
  workdir = mkdtempSync(join(tmpdir(), 'wrenn-sdk-'));
});

after(async () => {
  if (workdir) rmSync(workdir, { recursive: true, force: true });
  if (envd && !envdExit) {
    const exited = new Promise((r) => envd.once('exit', r));
    envd.kill('SIGTERM');
    await exited;
  }
});

test('requests without the access token are refused', async () => {
  const bare = new Sandbox({ sandboxId: 'sdk-test', envdVersion: '0.6.13' });
  await assert.rejects(bare.commands.run('true'), (err) => /unauthenticated|401|token/i.test(String(err)));
  const res = await fetch(`${url}/envs`);
  assert.equal(res.status, 401);
});

test('commands: foreground run with stdout, stderr, exit code and env', async () => {
  const ok = await sbx.commands.run('echo hello; echo oops >&2; echo "$WRENN_SDK_TEST"', { user: 'root' });
  assert.equal(ok.exitCode, 0);
  assert.equal(ok.stdout, 'hello\nyes\n');
  assert.equal(ok.stderr, 'oops\n');

  const chunks = [];
  await assert.rejects(
    sbx.commands.run('for i in 1 2 3; do echo line$i; done; exit 7', { user: 'root', onStdout: (d) => chunks.push(d) }),
    (err) => err instanceof CommandExitError && err.exitCode === 7 && err.stdout === 'line1\nline2\nline3\n',
  );
  assert.equal(chunks.join(''), 'line1\nline2\nline3\n');
});

test('commands: background, list, connect and kill', async () => {
  const h = await sbx.commands.run('sleep 300', { background: true, user: 'root', tag: 'sdk-sleeper' });
  assert.ok(h.pid > 0);
  const listed = await sbx.commands.list();
  assert.ok(listed.some((p) => p.pid === h.pid), `pid ${h.pid} in list ${JSON.stringify(listed)}`);
  const attached = await sbx.commands.connect(h.pid);
  assert.equal(await sbx.commands.kill(h.pid), true);
  await assert.rejects(h.wait(), (err) => err instanceof CommandExitError);
  await assert.rejects(attached.wait(), (err) => err instanceof CommandExitError);
  assert.ok(!(await sbx.commands.list()).some((p) => p.pid === h.pid), 'killed process left the list');
  assert.equal(await sbx.commands.kill(h.pid), false, 'killing a gone process reports false');
});

test('commands: stdin', async () => {
  const h = await sbx.commands.run('cat', { background: true, stdin: true, user: 'root' });
  await sbx.commands.sendStdin(h.pid, 'first line\n');
  await sbx.commands.sendStdin(h.pid, 'second line\n');
  await sbx.commands.closeStdin(h.pid);
  const res = await h.wait();
  assert.equal(res.exitCode, 0);
  assert.equal(res.stdout, 'first line\nsecond line\n');
});

test('pty: create, input, resize', async () => {
  let out = '';
  const dec = new TextDecoder();
  const pty = await sbx.pty.create({ cols: 80, rows: 24, user: 'root', cwd: workdir, onData: (d) => { out += dec.decode(d); } });
  const enc = new TextEncoder();
  await sbx.pty.sendInput(pty.pid, enc.encode('echo pty-$((20+22))\n'));
  await until(() => out.includes('pty-42'), 'pty echo output');
  await sbx.pty.resize(pty.pid, { cols: 101, rows: 37 });
  await sbx.pty.sendInput(pty.pid, enc.encode('stty size\n'));
  await until(() => out.includes('37 101'), `stty size after resize (saw ${JSON.stringify(out.slice(-200))})`);
  await sbx.pty.sendInput(pty.pid, enc.encode('exit 0\n'));
  const res = await pty.wait();
  assert.equal(res.exitCode, 0);
});

test('files: write, read, list, rename, remove', async () => {
  const dir = `${workdir}/files`;
  const info = await sbx.files.write(`${dir}/nested/a.txt`, 'hello files');
  assert.equal(info.path, `${dir}/nested/a.txt`);
  assert.equal(await sbx.files.read(`${dir}/nested/a.txt`), 'hello files');
  assert.equal(await sbx.files.exists(`${dir}/nested/a.txt`), true);
  assert.equal(await sbx.files.makeDir(`${dir}/made`), true);
  assert.equal(await sbx.files.makeDir(`${dir}/made`), false, 'makeDir on an existing dir reports false');
  const entries = await sbx.files.list(dir);
  assert.deepEqual(entries.map((e) => e.name).sort(), ['made', 'nested']);
  assert.equal(entries.find((e) => e.name === 'made').type, 'dir');
  const moved = await sbx.files.rename(`${dir}/nested/a.txt`, `${dir}/b.txt`);
  assert.equal(moved.name, 'b.txt');
  const stat = await sbx.files.getInfo(`${dir}/b.txt`);
  assert.equal(stat.size, 'hello files'.length);
  assert.equal(stat.type, 'file');
  await sbx.files.remove(`${dir}/b.txt`);
  assert.equal(await sbx.files.exists(`${dir}/b.txt`), false);
  await assert.rejects(sbx.files.read(`${dir}/b.txt`), (err) => err instanceof FileNotFoundError);
});

test('files: watch a directory', async () => {
  const dir = `${workdir}/watched`;
  await sbx.files.makeDir(dir);
  const events = [];
  const handle = await sbx.files.watchDir(dir, (e) => { events.push(e); });
  try {
    await sbx.files.write(`${dir}/new.txt`, 'x');
    await until(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.CREATE), 'create event');
    await sbx.files.remove(`${dir}/new.txt`);
    await until(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.REMOVE), 'remove event');
  } finally {
    await handle.stop();
  }
});

test('files: large file round trip keeps every byte', async () => {
  const data = randomBytes(64 << 20);
  const want = createHash('sha256').update(data).digest('hex');
  const path = `${workdir}/large.bin`;
  await sbx.files.write(path, new Blob([data]));
  const sum = await sbx.commands.run(`sha256sum ${path}`, { user: 'root' });
  assert.equal(sum.stdout.split(' ')[0], want, 'hash inside the sandbox');
  const back = await sbx.files.read(path, { format: 'bytes' });
  assert.equal(back.length, data.length);
  assert.equal(createHash('sha256').update(back).digest('hex'), want, 'hash after download');
});
