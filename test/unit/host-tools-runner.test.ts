// Issue 11: every host tool goes through CommandRunner, streamed ones (xz/zstd, gpgv, mmdebstrap,
// the build VM's ssh) included, so a fake runner can stand in for each; and ProcessRunner.spawn keeps the one
// "not installed" error.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { BangerError } from '../../src/api/errors.js';
import type { Image, Vm } from '../../src/api/schemas.js';
import { decompressor } from '../../src/archive/decompress.js';
import type { Layout } from '../../src/config/layout.js';
import { ImageBuildService } from '../../src/daemon/services/image-build.js';
import type { ImageService } from '../../src/daemon/services/images.js';
import type { VmService } from '../../src/daemon/services/vms.js';
import { CommandError, type CommandRunner, ProcessRunner } from '../../src/host/runner.js';
import { RootfsLedger } from '../../src/images/layer-apply.js';
import { runRecipe } from '../../src/images/recipe.js';
import { fetchVerifiedRelease } from '../../src/kernels/release.js';
import type { OpContext } from '../../src/util/op-context.js';
import { FakeRunner } from '../helpers/fake-runner.js';
import { tarOf } from '../helpers/tar.js';

let base: string;
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'banger-runner-'));
});
after(() => rm(base, { recursive: true, force: true }));

/** Asserts the one missing_dependency error: names the tool and why, and the package to install. */
function isMissing(tool: string, pkg: string, why?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof BangerError, String(e));
    assert.equal(e.code, 'missing_dependency');
    assert.match(e.message, new RegExp(`^${tool} is not installed`));
    if (why) assert.match(e.message, why);
    assert.match(e.fix ?? '', new RegExp(`apt-get install ${pkg} `));
    return true;
  };
}

async function inflate(runner: CommandRunner, data: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(Readable.from([data]), decompressor('xz', runner), async (src: AsyncIterable<Buffer>) => {
    for await (const c of src) chunks.push(c);
  });
  return Buffer.concat(chunks);
}

/** An OpContext that records what the operation logged (a named fake: no registry of operations behind it). */
function fakeCtx(signal = new AbortController().signal): OpContext & { logs: string[] } {
  const logs: string[] = [];
  return { id: 'op-test', signal, logs, stage() {}, progress() {}, log: (l) => void logs.push(l), setTarget() {}, checkCancelled() {} };
}

// ---- ProcessRunner.spawn ----------------------------------------------------------------------

test('ProcessRunner.spawn: stdin in, stdout and stderr out as streams, the exit status in done', async () => {
  const child = new ProcessRunner().spawn('sh', ['-c', 'read x; echo "out:$x"; echo "err:$x" >&2; exit 3']);
  const read = (s: Readable) => s.toArray().then((c) => Buffer.concat(c).toString());
  const out = read(child.stdout);
  const err = read(child.stderr);
  child.stdin.end('hello\n');
  assert.deepEqual(await child.done, { code: 3, signal: null });
  assert.equal(await out, 'out:hello\n');
  assert.equal(await err, 'err:hello\n');
});

test("ProcessRunner.spawn: 'ignore' streams are null; a kill shows as the signal in done", async () => {
  const child = new ProcessRunner().spawn('sleep', ['30'], { stdin: 'ignore', stdout: 'ignore', stderr: 'ignore' });
  assert.equal(child.stdin, null);
  assert.equal(child.stdout, null);
  assert.equal(child.stderr, null);
  child.kill('SIGTERM');
  assert.deepEqual(await child.done, { code: null, signal: 'SIGTERM' });
});

test('ProcessRunner.spawn: a tool not on PATH rejects done with missing_dependency naming its package', async () => {
  const emptyPath = join(base, 'empty-path');
  await mkdir(emptyPath);
  const child = new ProcessRunner().spawn('xz', ['-dc'], { env: { PATH: emptyPath }, neededFor: 'needed to decompress' });
  child.stdin.end('data');
  await assert.rejects(child.done, isMissing('xz', 'xz-utils', /\(needed to decompress\)/));
  // run() goes through spawn: the same error.
  await assert.rejects(new ProcessRunner().run('gpgv', ['--version'], { env: { PATH: emptyPath } }), isMissing('gpgv', 'gpgv'));
});

test('ProcessRunner.spawn: aborting the signal kills the command and rejects done with the AbortError', async () => {
  const ac = new AbortController();
  const child = new ProcessRunner().spawn('sleep', ['30'], { stdin: 'ignore', signal: ac.signal });
  ac.abort();
  await assert.rejects(child.done, { name: 'AbortError' });
});

// ---- the decompressor CLIs ----------------------------------------------------------------------

test('decompressor(xz): the CLI runs through the runner; a missing xz is missing_dependency naming xz-utils', async () => {
  const runner = new FakeRunner(() => 'missing');
  await assert.rejects(inflate(runner, Buffer.from('compressed')), isMissing('xz', 'xz-utils', /needed to decompress/));
  assert.deepEqual(runner.calls, [['xz', '-dcq', '--memlimit-decompress=256MiB']]);
});

test('decompressor(xz): output ends only on exit 0; a failing CLI fails the stream with its stderr', async () => {
  const fedTo: Buffer[] = [];
  const ok = new FakeRunner((_c, _a, stdin) => {
    fedTo.push(stdin);
    return { stdout: 'plain text' };
  });
  assert.equal((await inflate(ok, Buffer.from('compressed bytes'))).toString(), 'plain text');
  assert.equal(fedTo[0]?.toString(), 'compressed bytes', 'the input reached the CLI on stdin');

  const failing = new FakeRunner(() => ({ stdout: 'partial', code: 1, stderr: 'xz: (stdin): Compressed data is corrupt' }));
  await assert.rejects(inflate(failing, Buffer.from('x')), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'rejected_content');
    assert.match(e.message, /xz could not decompress the data: xz: \(stdin\): Compressed data is corrupt/);
    return true;
  });
});

// ---- gpgv ----------------------------------------------------------------------------------------

const RELEASE = `Origin: Debian\nSuite: stable\nSHA256:\n ${'ab'.repeat(32)} 1234 main/binary-amd64/Packages.xz\n`;

async function mirrorWithInRelease(name: string): Promise<{ mirror: string; keyring: string }> {
  const root = join(base, name);
  await mkdir(join(root, 'dists', 'bookworm'), { recursive: true });
  await writeFile(join(root, 'dists', 'bookworm', 'InRelease'), `-----BEGIN PGP SIGNED MESSAGE-----\n\n${RELEASE}-----BEGIN PGP SIGNATURE-----\n`);
  const keyring = join(root, 'keyring.gpg');
  await writeFile(keyring, 'not a real keyring: the fake gpgv never reads it');
  return { mirror: pathToFileURL(root).href, keyring };
}

test('fetchVerifiedRelease: a gpgv that refuses the signature → rejected_content naming the keyring and gpgv’s words', async () => {
  const { mirror, keyring } = await mirrorWithInRelease('refused');
  const gpgv = new FakeRunner(() => ({ code: 2, stderr: 'gpgv: Signature made Sat\ngpgv: BAD signature from "Debian Archive"' }));
  await assert.rejects(fetchVerifiedRelease(gpgv, mirror, 'bookworm', keyring), (e: unknown) => {
    assert.ok(e instanceof BangerError, String(e));
    assert.equal(e.code, 'rejected_content');
    assert.match(e.message, /InRelease does not verify against .*keyring\.gpg: gpgv: Signature made Sat; gpgv: BAD signature/);
    return true;
  });
  const call = gpgv.calls[0] ?? [];
  assert.equal(call[0], 'gpgv');
  assert.equal(call[call.indexOf('--keyring') + 1], keyring);
});

test('fetchVerifiedRelease: only what gpgv writes out (the signed text) is parsed; a missing gpgv is missing_dependency', async () => {
  const { mirror, keyring } = await mirrorWithInRelease('accepted');
  const gpgv = new FakeRunner(async (_c, args) => {
    await writeFile(args[args.indexOf('--output') + 1] as string, RELEASE);
    return {};
  });
  const release = await fetchVerifiedRelease(gpgv, mirror, 'bookworm', keyring);
  assert.deepEqual([...release], [['main/binary-amd64/Packages.xz', { sha256: 'ab'.repeat(32), size: 1234 }]]);

  await assert.rejects(fetchVerifiedRelease(new FakeRunner(() => 'missing'), mirror, 'bookworm', keyring), isMissing('gpgv', 'gpgv', /signed package index/));
});

// ---- mmdebstrap ----------------------------------------------------------------------------------

const recipe = { kind: 'recipe' as const, builder: 'mmdebstrap' as const, suite: 'bookworm', variant: 'minbase' as const, packages: [] };

test('runRecipe: the tar mmdebstrap writes is unpacked into the root; its stderr goes to the operation log', async () => {
  const root = join(base, 'recipe-ok');
  await mkdir(root);
  const tar = await tarOf([
    { name: './etc/', type: 'directory' },
    { name: './etc/os-release', body: 'ID=debian\n' },
  ]);
  const mmdebstrap = new FakeRunner(() => ({ stdout: tar, stderr: 'I: running apt-get update...\nI: success\n' }));
  const ctx = fakeCtx();
  await runRecipe(mmdebstrap, recipe, 'http://deb.debian.org/debian', root, new RootfsLedger(), false, ctx);
  assert.equal(await readFile(join(root, 'etc', 'os-release'), 'utf8'), 'ID=debian\n');
  assert.deepEqual(ctx.logs, ['I: running apt-get update...', 'I: success']);
  assert.equal(mmdebstrap.calls[0]?.[0], 'mmdebstrap');
});

test('runRecipe: a failing mmdebstrap → host_command_failed with its last lines; a missing one → missing_dependency', async () => {
  const root = join(base, 'recipe-failed');
  await mkdir(root);
  const failing = new FakeRunner(() => ({ code: 1, stderr: 'E: Unable to locate package nosuchpkg\n' }));
  await assert.rejects(runRecipe(failing, recipe, 'http://deb.debian.org/debian', root, new RootfsLedger(), false, fakeCtx()), (e: unknown) => {
    assert.ok(e instanceof BangerError, String(e));
    assert.equal(e.code, 'host_command_failed');
    assert.match(e.message, /mmdebstrap failed \(exit 1\):\nE: Unable to locate package nosuchpkg/);
    return true;
  });
  await assert.rejects(
    runRecipe(new FakeRunner(() => 'missing'), recipe, 'http://deb.debian.org/debian', root, new RootfsLedger(), false, fakeCtx()),
    isMissing('mmdebstrap', 'mmdebstrap', /builds Debian images/),
  );
});

// ---- the fake itself -----------------------------------------------------------------------------

test('FakeRunner.run: a non-zero exit rejects with CommandError unless allowFailure', async () => {
  const runner = new FakeRunner(() => ({ code: 4, stderr: 'nope' }));
  await assert.rejects(runner.run('ip', ['link']), CommandError);
  assert.equal((await runner.run('ip', ['link'], { allowFailure: true })).code, 4);
});

// ---- ssh into the build VM -----------------------------------------------------------------------

/** ImageService and VmService stand-ins that record what the build asked of them. */
function fakeBuildDeps(runner: CommandRunner, logDir: string) {
  const events: string[] = [];
  const images = {
    assertNameFree: () => undefined,
    saveFromVm: async (name: string) => {
      events.push(`save ${name}`);
      return { name } as unknown as Image;
    },
  } as unknown as ImageService;
  const vms = {
    create: async () => {
      events.push('create');
      return { id: 'vm-1' } as Vm;
    },
    bulk: async (action: string, ids: string[]) => {
      events.push(`${action} ${ids.join(',')}`);
      return { results: [{ ok: true }] };
    },
    diskPaths: () => ({ root: '/nonexistent/root', format: 'raw' as const, work: '/nonexistent/work' }),
  } as unknown as VmService;
  return { events, deps: { images, vms, layout: { logDir } as Layout, sshConfigPath: '/banger/ssh_config', runner } };
}

const buildReq = { from: 'debian-bookworm', name: 'built', script: 'echo building\n', nat: false };

test('image build: the script goes to ssh’s stdin and its lines to the log; a failing script saves nothing; the VM is always deleted', async () => {
  const scripts: string[] = [];
  const ok = new FakeRunner((_c, _a, stdin) => {
    scripts.push(stdin.toString());
    return scripts.length === 1 ? { stdout: 'building\n', stderr: 'a warning\n' } : {};
  });
  const good = fakeBuildDeps(ok, join(base, 'logs-ok'));
  const ctx = fakeCtx();
  await new ImageBuildService(good.deps).build(buildReq, ctx);
  assert.deepEqual(good.events, ['create', 'stop vm-1', 'save built', 'delete vm-1']);
  assert.equal(scripts[0], 'echo building\n');
  assert.match(scripts[1] ?? '', /cp -a \/root\/\. /, 'then the commit script');
  const ssh = ok.calls[0] ?? [];
  assert.equal(ssh[0], 'ssh');
  assert.deepEqual(ssh.slice(1, 3), ['-F', '/banger/ssh_config']);
  assert.equal(ssh.at(-3), '--', 'nothing after it is read as an ssh option');
  assert.match(ssh.at(-2) ?? '', /^build-\S+\.vm$/);
  assert.equal(ssh.at(-1), 'bash -se');
  assert.ok(ctx.logs.includes('building') && ctx.logs.includes('a warning'), JSON.stringify(ctx.logs));

  const failing = fakeBuildDeps(new FakeRunner(() => ({ code: 3 })), join(base, 'logs-failed'));
  await assert.rejects(new ImageBuildService(failing.deps).build(buildReq, fakeCtx()), /the build script exited with status 3; no image was saved/);
  assert.deepEqual(failing.events, ['create', 'delete vm-1']);
});

test('image build: no ssh on the host → missing_dependency naming openssh-client, and the build VM is deleted', async () => {
  const noSsh = fakeBuildDeps(new FakeRunner(() => 'missing'), join(base, 'logs-nossh'));
  await assert.rejects(new ImageBuildService(noSsh.deps).build(buildReq, fakeCtx()), isMissing('ssh', 'openssh-client'));
  assert.deepEqual(noSsh.events, ['create', 'delete vm-1']);
});
