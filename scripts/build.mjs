// Builds everything banger ships: TypeScript → dist/, the static guest binaries → agent/build/,
// the root helper's host tools → native/build/, and the build stamp (version, commit, time) that `banger version` prints.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });

run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json']);

let commit = 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] })
    .toString()
    .trim();
  const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root }).toString().trim();
  if (dirty) commit += '-dirty';
} catch {
  /* not a git checkout */
}
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
writeFileSync(join(root, 'dist/build-info.json'), `${JSON.stringify({ version: pkg.version, commit, buildTime: new Date().toISOString() }, null, 2)}\n`);

// Static guest binaries: they must run in any distro (glibc or musl), so they are linked statically.
if (existsSync(join(root, 'agent/Makefile'))) {
  mkdirSync(join(root, 'agent/build'), { recursive: true });
  run('make', ['-s', '-C', 'agent']);
}

// Host tools of the root helper (bangerd-root): banger-peercred reads SO_PEERCRED, which Node cannot.
if (existsSync(join(root, 'native/Makefile'))) {
  mkdirSync(join(root, 'native/build'), { recursive: true });
  run('make', ['-s', '-C', 'native']);
}

// The web UI (docs/web.md): web/ bundled into dist/web — index.html, assets/app.js, assets/app.css —
// minified, no source maps, everything from node_modules (the daemon serves it; no CDN).
if (existsSync(join(root, 'web/src/main.tsx'))) {
  const esbuild = await import('esbuild');
  const out = join(root, 'dist/web');
  rmSync(out, { recursive: true, force: true });
  mkdirSync(join(out, 'assets'), { recursive: true });
  await esbuild.build({
    absWorkingDir: root,
    entryPoints: { app: 'web/src/main.tsx' },
    outdir: join(out, 'assets'),
    bundle: true,
    minify: true,
    format: 'esm',
    splitting: true, // the terminal (xterm.js, most of the bytes) is a chunk loaded on first use
    chunkNames: 'chunk-[hash]',
    target: ['es2022', 'chrome111', 'firefox115', 'safari16'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    tsconfig: 'web/tsconfig.json',
    legalComments: 'none',
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  copyFileSync(join(root, 'web/index.html'), join(out, 'index.html'));
}
