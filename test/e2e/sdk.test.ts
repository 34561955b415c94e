import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Banger, BangerError, type OperationEvent, type Vm } from '../../src/sdk/index.js';
import { guestAssets, isAlive, ROOT, runProcess, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * The SDK end to end on a real VM (QEMU, TCG), through the real daemon and agent: create with
 * progress, exec results, spawn and reattach by name from a second client, files (bytes, text,
 * trees, a hostile tree), workspace prepare and export, an abort that leaves nothing running in the
 * guest, error codes, and disposal. Then every example of docs/sdk.md runs as its own `node`
 * program against the same VM. ONE VM for the file.
 */
const assets = guestAssets();
const hasGit = spawnSync('git', ['--version']).status === 0;

const git = (cwd: string, ...args: string[]) =>
  execFileSync('git', ['-c', 'user.name=T', '-c', 'user.email=t@example.com', '-c', 'init.defaultBranch=main', ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' },
  }).trim();

const isCode = (code: string) => (e: unknown) => e instanceof BangerError && e.code === code;

describe('the SDK on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let tmp: string;
  let banger: Banger;
  let vm: Vm;
  const events: OperationEvent[] = [];

  before(async () => {
    tmp = await mkdtemp('/tmp/bg-sdk-e2e-');
    home = await TestHome.create(['accel = "tcg"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'), { netns: true });
    const a = assets as NonNullable<typeof assets>;
    // The CLI starts the daemon inside the test's network namespace; the SDK then only needs its socket.
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    banger = await Banger.connect({ home: home.dir, autostart: false });
    const creating = banger.vms.create({ name: 'sdk', image: 'img', waitFor: 'agent', dispose: 'delete' });
    for await (const e of creating.events) events.push(e);
    vm = await creating;
  });
  after(async () => {
    await home?.destroy();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('create: progress came as events (stages, then done) and the handle is the running VM', async () => {
    const stages = events.flatMap((e) => (e.type === 'stage' ? [e.stage.name] : []));
    assert.ok(stages.includes('start VMM'), `stages: ${stages.join(', ')}`);
    assert.equal(events.at(-1)?.type, 'done');
    assert.equal(vm.name, 'sdk');
    assert.equal(vm.info.state, 'running');
    assert.equal((await vm.refresh()).state, 'running');
  });

  test('exec: exit code and separate streams as a result; check() throws process_failed; argv, stdin, cwd, env', async () => {
    const r = await vm.exec('echo out; echo err >&2; exit 3');
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal(r.ok, false);
    assert.throws(() => r.check(), isCode('process_failed'));
    const cat = await vm.exec(['sh', '-c', 'cat; pwd; echo "$X"'], { input: 'in\n', cwd: '/tmp', env: { X: 'y z' } });
    assert.equal(cat.check().stdout, 'in\n/tmp\ny z\n');
    const timed = await vm.exec('sleep 30', { timeoutMs: 500 });
    assert.equal(timed.timedOut, true);
  });

  test('spawn, then reattach by name from a second client: events from an offset, stdin, wait, waitForLog; attach, resize, waitForPort', async () => {
    const p = await vm.spawn('echo one; read line; echo "got $line"; echo bye >&2', { name: 'worker', stdin: true });
    assert.equal(p.name, 'worker');

    const second = await Banger.connect({ home: home.dir, autostart: false });
    const again = await (await second.vms.get('sdk')).process('worker');
    assert.equal(again.id, p.id);
    await again.waitForLog(/one/, { timeoutMs: 30_000 });
    await again.write('hello\n');
    await again.end();
    const r = await again.wait({ timeoutMs: 30_000 });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'one\ngot hello\n');
    assert.equal(r.stderr, 'bye\n');
    // events from an offset: only what came after the first 4 bytes of stdout, then exit.
    const seen: string[] = [];
    for await (const e of p.events({ from: { stdout: 4 } })) seen.push(e.type === 'exit' ? `exit ${e.process.exitCode}` : `${e.type}:${e.data}`);
    assert.deepEqual(seen.filter((s) => s.startsWith('stdout')).join(''), 'stdout:got hello\n');
    assert.equal(seen.at(-1), 'exit 0');
    assert.ok((await vm.processes()).some((x) => x.id === p.id));

    // attach: stdin up, output down as an async iterable, the process at the end.
    const echo = await vm.spawn(['cat'], { stdin: true });
    const attached = await echo.attach();
    attached.write(Buffer.from('via attach\n'));
    attached.end();
    let got = '';
    for await (const o of attached) got += o.data.toString();
    assert.equal(got, 'via attach\n');
    assert.equal((await attached.done)?.exitCode, 0);
    // resize: the terminal of a pty process takes the new size.
    const tty = await vm.spawn('sleep 1; stty size', { pty: { rows: 24, cols: 80 } });
    await tty.resize(40, 100);
    assert.equal((await tty.wait({ timeoutMs: 30_000 })).stdout.trim(), '40 100');

    // perl-base is in every Debian image: a listener for waitForPort.
    const server = await vm.spawn([
      'perl',
      '-MIO::Socket::INET',
      '-e',
      'sleep 1; my $s = IO::Socket::INET->new(LocalPort => 7311, Listen => 1, ReuseAddr => 1) or die; sleep 60',
    ]);
    const port = await server.waitForPort(7311, { timeoutMs: 30_000 });
    assert.equal(port.port, 7311);
    await server.kill();
    const killed = await server.wait({ timeoutMs: 30_000 });
    assert.equal(killed.signal, 'KILL');
  });

  test('files: bytes and text round trip; a tree goes up and comes back; a guest tree with a link out is refused on the host', async () => {
    const bytes = randomBytes(300_000);
    await vm.files.write('/root/sdk/blob.bin', bytes, { mkdirs: true });
    assert.ok((await vm.files.read('/root/sdk/blob.bin')).equals(bytes));
    await vm.files.write('/root/sdk/note.txt', 'héllo\n', { mode: 0o640 });
    assert.equal(await vm.files.readText('/root/sdk/note.txt'), 'héllo\n');
    assert.equal((await vm.files.stat('/root/sdk/note.txt')).mode & 0o777, 0o640);

    const src = join(tmp, 'tree');
    await mkdir(join(src, 'a', 'b'), { recursive: true });
    await writeFile(join(src, 'a', 'b', 'deep.txt'), 'deep');
    await writeFile(join(src, 'top.bin'), bytes.subarray(0, 1000));
    await symlink('a/b/deep.txt', join(src, 'link'));
    await vm.files.upload(src, '/root/sdk/tree');
    assert.equal((await vm.exec('cat /root/sdk/tree/a/b/deep.txt; echo; readlink /root/sdk/tree/link')).check().stdout, 'deep\na/b/deep.txt\n');
    const back = join(tmp, 'back');
    await vm.files.download('/root/sdk/tree', back);
    assert.equal(await readFile(join(back, 'a', 'b', 'deep.txt'), 'utf8'), 'deep');
    assert.ok((await readFile(join(back, 'top.bin'))).equals(bytes.subarray(0, 1000)));
    assert.equal(await readlink(join(back, 'link')), 'a/b/deep.txt');
    await assert.rejects(vm.files.download('/root/sdk/tree', back), isCode('conflict'), 'an existing host path is never written into');

    // Hostile: a guest tree whose symlink names a host path. Nothing lands on the host.
    (await vm.exec('mkdir -p /root/evil && echo x > /root/evil/f && ln -sf /etc/passwd /root/evil/pw')).check();
    const evil = join(tmp, 'evil');
    await assert.rejects(vm.files.download('/root/evil', evil), isCode('rejected_content'));
    assert.equal(existsSync(evil), false);
    const leftovers = (await runProcess('ls', ['-A', tmp], {}, 10_000)).stdout.split('\n').filter((n) => n.startsWith('.banger-download-'));
    assert.deepEqual(leftovers, [], 'the staging directory is removed');
  });

  test('workspace: prepare (an operation with events) and export as a patch and as a branch', {
    skip: requires(hasGit, 'git missing on the host'),
  }, async () => {
    const repo = join(tmp, 'repo');
    await mkdir(repo);
    git(repo, 'init', '-q');
    await writeFile(join(repo, 'a.txt'), 'base\n');
    git(repo, 'add', '-A');
    git(repo, 'commit', '-qm', 'base');
    const prepare = vm.workspace.prepare({ hostPath: repo });
    const kinds = new Set<string>();
    for await (const e of prepare.events) kinds.add(e.type);
    const prepared = await prepare;
    assert.ok(kinds.has('done'));
    assert.equal(prepared.workspace.baseCommit, git(repo, 'rev-parse', 'HEAD'));
    (await vm.exec('echo guest >> a.txt', { cwd: '/root/repo' })).check();
    const status = await vm.workspace.status();
    assert.deepEqual(
      status.changes.map((c) => c.path),
      ['a.txt'],
    );
    const patch = await vm.workspace.export();
    assert.equal(patch.format, 'patch');
    assert.match(patch.format === 'patch' ? (patch.text ?? '') : '', /^\+guest$/m);
    const branch = await vm.workspace.export({ format: 'branch', name: 'sdk' });
    assert.equal(branch.format === 'branch' && branch.ref, 'refs/banger/sdk/sdk');
    assert.equal(git(repo, 'show', 'refs/banger/sdk/sdk:a.txt'), 'base\nguest');
  });

  test('aborting a long exec kills its whole process group in the guest: nothing is left running', async () => {
    const ac = new AbortController();
    // A shell with two children, one in the background: the abort must reach all three.
    const running = vm.exec('sleep 301 & sleep 302; wait', { signal: ac.signal, name: 'long' });
    for (let i = 0; i < 200; i++) {
      const procs = await vm.processes();
      const p = procs.find((x) => x.name === 'long' && x.state === 'running');
      if (p && (await vm.exec("pgrep -f '^sleep 30[2]'")).exitCode === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    ac.abort();
    await assert.rejects(running, isCode('cancelled'));
    const left = await vm.exec("pgrep -af '^sleep 30[12]'");
    assert.equal(left.exitCode, 1, `still running in the guest: ${left.stdout}`);
    const long = (await vm.processes()).find((x) => x.name === 'long');
    assert.equal(long?.state, 'exited');
    assert.equal(long?.signal, 'KILL');
  });

  test('errors carry stable codes: a missing VM, process and file are not_found', async () => {
    await assert.rejects(banger.vms.get('no-such-vm'), (e: unknown) => isCode('not_found')(e) && typeof (e as BangerError).opId === 'string');
    await assert.rejects(vm.process('no-such-process'), isCode('not_found'));
    await assert.rejects(vm.files.read('/no/such/file'), isCode('not_found'));
  });

  test('docs/sdk.md: every example runs as its own program against this VM and prints what the doc says', {
    skip: requires(hasGit, 'git missing on the host'),
  }, async () => {
    const doc = await readFile(join(ROOT, 'docs', 'sdk.md'), 'utf8');
    const examples = [...doc.matchAll(/^```js example=(\S+)\n([\s\S]*?)^```$/gm)].map((m) => ({ name: m[1] as string, code: m[2] as string }));
    const outputs = new Map([...doc.matchAll(/^```text output=(\S+)\n([\s\S]*?)^```$/gm)].map((m) => [m[1] as string, m[2] as string]));
    assert.ok(examples.length >= 6, `examples found: ${examples.map((e) => e.name).join(', ')}`);
    // Inside the repository, so `import 'banger'` resolves to this package (its "exports").
    const dir = await mkdtemp(join(ROOT, 'dist', '.sdk-examples-'));
    const repo = join(tmp, 'doc-repo');
    await mkdir(repo);
    git(repo, 'init', '-q');
    await writeFile(join(repo, 'README'), 'doc\n');
    git(repo, 'add', '-A');
    git(repo, 'commit', '-qm', 'doc');
    try {
      for (const { name, code } of examples) {
        const file = join(dir, `${name}.mjs`);
        await writeFile(file, code);
        const r = await runProcess(
          process.execPath,
          [file],
          { env: { ...home.env, BANGER_VM: 'sdk', BANGER_IMAGE: 'img', BANGER_REPO: repo }, cwd: tmp },
          120_000,
        );
        assert.equal(r.code, 0, `example ${name} failed:\n${r.stderr}`);
        assert.equal(r.stdout, outputs.get(name), `example ${name}'s output`);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('disposal: leaving an `await using` block deletes the VM', async (t) => {
    if (!(Symbol as { asyncDispose?: symbol }).asyncDispose) return t.skip('this Node has no Symbol.asyncDispose');
    const { dir, pid } = await vm.refresh();
    assert.ok(pid && isAlive(pid), 'the VMM runs before');
    {
      await using disposing = vm;
      assert.equal(disposing.disposeAction, 'delete');
    }
    await assert.rejects(banger.vms.get('sdk'), isCode('not_found'));
    assert.equal(await lstat(dir).catch(() => undefined), undefined, 'its directory is gone');
    assert.equal(isAlive(pid), false, 'its VMM is gone');
  });
});
