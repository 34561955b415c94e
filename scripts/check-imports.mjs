#!/usr/bin/env node
// The import graph of src/ points down: every relative import in src/**/*.ts goes to the same
// module (top directory under src/) or to a module of a lower layer. An edge upward or sideways is
// printed and the exit status is 1, unless it is one of the EXCEPTIONS below, each with its reason.
//   node scripts/check-imports.mjs [SRC_DIR]        (default: src next to this script)
//   node scripts/check-imports.mjs --edges [SRC_DIR] (print every cross-module edge and exit)
// Imports are found by TypeScript's own pre-processor (static, type-only, re-exports and dynamic
// import() alike, never inside comments or strings): the edges the compiler sees.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/**
 * Top to bottom. A module may import its own files and any module of a LOWER layer; modules that
 * share a layer are siblings and may not import each other. `only` narrows what a layer may import
 * (module names, or file paths relative to src/).
 */
export const LAYERS = [
  // bangerd-root, the privileged helper: its own entry point and process, kept small (no commander,
  // pino or SQLite). It serves PrivilegedOps over a socket, so it reaches down to host/ and nothing
  // above it; nothing imports it (the daemon speaks to it through host/helper-client.ts).
  { name: 'helper', modules: ['helper'], only: ['host', 'util', 'api'] },
  // The command line. Talks to the daemon through the client only (plus the local-only commands below).
  { name: 'cli', modules: ['cli'], only: ['mcp', 'client', 'api', 'util', 'config/layout.ts'] },
  // `banger mcp` (the MCP server for coding agents, stdio) and the public SDK (`import { Banger } from 'banger'`):
  // siblings, each a client of the daemon through src/client only. The CLI starts the MCP server.
  { name: 'mcp, sdk', modules: ['mcp', 'sdk'], only: ['client', 'api', 'util', 'config/layout.ts'] },
  // The typed HTTP client of the daemon's socket, auto-start. Never the daemon's internals.
  { name: 'client', modules: ['client'], only: ['api', 'util', 'config/layout.ts'] },
  // bangerd: main, composition root, router and routes, operations, DNS, services.
  { name: 'daemon', modules: ['daemon'] },
  // `banger doctor`'s checks and the real host probe (reads host, store and config, changes nothing).
  { name: 'doctor', modules: ['doctor'] },
  // `banger system …`: systemd unit renderers, the owner's preparation, the supervisor (reads/writes host files, runs systemctl).
  { name: 'system', modules: ['system'] },
  // Image pipeline (OCI pull, recipe, bundle, rootfs build, image catalog); an image names its kernel.
  { name: 'images', modules: ['images'] },
  // Kernel catalog, Debian index resolution, vmlinux extraction.
  { name: 'kernels', modules: ['kernels'] },
  // Catalog source reader (file or https) / guest side: agent client, initramfs, boot payload, cmdline.
  { name: 'catalog, guest', modules: ['catalog', 'guest'] },
  // VMM drivers and processes / OCI registry, manifests and blob cache.
  { name: 'vmm, oci', modules: ['vmm', 'oci'] },
  // Downloads, decompression, safe extraction, ar.
  { name: 'archive', modules: ['archive'] },
  // Host adapters (runner, disks, privileged network ops, TAPs, ssh config, CPU) / SQLite store / config file and layout.
  { name: 'host, store, config', modules: ['host', 'store', 'config'] },
  // Pure helpers: durations, ids, limits, bounded lines, IPv4 math, keyed mutex, operation context.
  { name: 'util', modules: ['util'] },
  // The contract: BangerError and the zod schemas. Imports nothing from src/.
  { name: 'api', modules: ['api'] },
];

/** Edges allowed although the layers forbid them: `from` file → `to` file or module, and why. */
export const EXCEPTIONS = [
  {
    from: 'cli/commands/misc.ts',
    to: 'doctor',
    why: 'local-only command: `banger doctor` checks this host without a daemon (it must work when bangerd cannot start)',
  },
  {
    from: 'cli/commands/system.ts',
    to: 'system',
    why: 'local-only command: `banger system install|start|stop|status` sets up and supervises the daemon itself (it must work when no daemon runs)',
  },
  {
    from: 'cli/commands/ssh.ts',
    to: 'host/ssh-config.ts',
    why: "local-only command: `banger ssh-config --install/--uninstall` edits the user's own ~/.ssh/config, which the daemon never touches",
  },
  {
    from: 'cli/cp-host.ts',
    to: 'archive',
    why: "`banger vm cp` reads and writes host files as the calling user (the daemon may be another user, and only a root CLI can keep owners): it packs host trees (archive/pack-tree.ts) and unpacks the guest's hostile tar only with archive/safe-extract.ts, in its own process",
  },
  {
    from: 'sdk/dirs.ts',
    to: 'archive',
    why: "`vm.files.upload/download` of the SDK, like `banger vm cp`, runs in the caller's process as the calling user: it packs host trees (archive/pack-tree.ts) and unpacks the guest's hostile tar only with archive/safe-extract.ts; loaded by a dynamic import on first use, so `import('banger')` stays without tar-stream",
  },
];

const moduleOf = (rel) => (rel.includes('/') ? rel.slice(0, rel.indexOf('/')) : '');

function walk(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The .ts files under srcDir, relative to it. */
export const sourceFiles = (srcDir) =>
  walk(srcDir)
    .map((f) => relative(srcDir, f).split(sep).join('/'))
    .sort();

/** Every relative import of every .ts file under srcDir, as paths relative to srcDir. */
export function importEdges(srcDir) {
  const edges = [];
  for (const from of sourceFiles(srcDir)) {
    const file = join(srcDir, from);
    const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    for (const { fileName } of info.importedFiles) {
      if (!fileName.startsWith('.')) continue; // node: builtins and packages
      const target = relative(srcDir, resolve(dirname(file), fileName))
        .split(sep)
        .join('/');
      edges.push({ from, to: target.replace(/\.js$/, '.ts'), spec: fileName });
    }
  }
  return edges;
}

const matches = (target, path) => target === path || moduleOf(path) === target;

/** The edges that break the layering (each with a reason), and exceptions that no edge uses. */
export function check(srcDir) {
  const layerOf = new Map();
  LAYERS.forEach((l, rank) => {
    for (const m of l.modules) layerOf.set(m, { ...l, rank });
  });
  const problems = [];
  for (const f of sourceFiles(srcDir)) {
    if (!layerOf.has(moduleOf(f)))
      problems.push({
        from: f,
        to: '',
        why: `${moduleOf(f) ? `module ${moduleOf(f)}/` : 'a file directly in src/'} is in no layer: add it to LAYERS in scripts/check-imports.mjs`,
      });
  }
  const used = new Set();
  for (const e of importEdges(srcDir)) {
    const fm = moduleOf(e.from);
    const tm = moduleOf(e.to);
    if (e.to.startsWith('../') || tm === '') {
      problems.push({ ...e, why: `imports ${e.spec}, outside any module of src/` });
      continue;
    }
    const fl = layerOf.get(fm);
    const tl = layerOf.get(tm);
    if (!fl || !tl) continue; // reported above, once per file
    if (fm === tm) continue;
    let why;
    if (tl.rank < fl.rank) why = `upward: ${fm} (layer ${fl.name}) imports ${tm} (layer ${tl.name}, above it)`;
    else if (tl.rank === fl.rank) why = `sideways: ${fm} and ${tm} are siblings in layer ${fl.name}`;
    else if (fl.only && !fl.only.some((a) => matches(a, e.to))) why = `${fm} may import only ${fl.only.join(', ')}`;
    if (!why) continue;
    const ex = EXCEPTIONS.findIndex((x) => x.from === e.from && matches(x.to, e.to));
    if (ex >= 0) {
      used.add(ex);
      continue;
    }
    problems.push({ ...e, why });
  }
  const unused = EXCEPTIONS.filter((_, i) => !used.has(i));
  return { problems, unused };
}

function main(argv) {
  const edgesOnly = argv[0] === '--edges';
  const args = edgesOnly ? argv.slice(1) : argv;
  const srcDir = resolve(args[0] ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'src'));
  if (edgesOnly) {
    for (const e of importEdges(srcDir)) if (moduleOf(e.from) !== moduleOf(e.to)) console.log(`${e.from} -> ${e.to}`);
    return 0;
  }
  const { problems, unused } = check(srcDir);
  for (const p of problems) console.error(p.to ? `${p.from} -> ${p.to}: ${p.why}` : `${p.from}: ${p.why}`);
  for (const x of unused) console.error(`exception ${x.from} -> ${x.to} is no longer used: remove it from EXCEPTIONS`);
  if (problems.length || unused.length) {
    console.error(`\n${problems.length} import(s) break the layering of src/ (top to bottom: ${LAYERS.map((l) => l.name).join(' > ')})`);
    return 1;
  }
  console.log(`imports ok: every edge of ${relative(process.cwd(), srcDir) || '.'} points down (${LAYERS.map((l) => l.name).join(' > ')})`);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = main(process.argv.slice(2));
