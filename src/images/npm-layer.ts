/**
 * The npm part of a recipe image (`source.npm` in the image catalog): a pinned package-lock.json
 * installed on the host into a layer directory banger creates, then applied over the image tree by
 * the same hardened unpacker as every other layer. No package code runs on the host: npm runs with
 * install scripts disabled, and what the scripts of `claude` and `opencode` would do (put the
 * platform binary where the package's `bin` points) is done here explicitly from the catalog's
 * `links`. Every tarball is checked by npm against the lock's sha512 integrity.
 */
import { constants as fsc } from 'node:fs';
import { chmod, copyFile, lstat, mkdir, readdir, readlink, symlink, unlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { createInterface } from 'node:readline';
import { BangerError } from '../api/errors.js';
import { copyRegularNoFollow, openRegularNoFollow, readRegularNoFollow } from '../archive/safe-extract.js';
import type { CommandRunner } from '../host/runner.js';
import type { OpContext } from '../util/op-context.js';

/** What the catalog says (see NpmSource in catalog.ts). */
export interface NpmLayerSpec {
  /** Directory holding package.json and package-lock.json (absolute). */
  dir: string;
  /** Where the packages go in the guest, e.g. /opt/banger/agents. */
  prefix: string;
  /** Entries of node_modules/.bin that get a link in /usr/local/bin. */
  bins: string[];
  /** Platform binaries: `file` (a package's placeholder) becomes a link to `target` (both under node_modules/). */
  links: { file: string; target: string }[];
}

const MAX_LOCK_BYTES = 8 * 1024 * 1024;
const MAX_LOCK_PACKAGES = 20_000;
/** npm's own name rule, scoped or not. */
export const NPM_NAME = /^(?:@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9][a-z0-9._~-]*$/;
/** An exact version (the lock's root dependencies must not be ranges: the image is keyed by them). */
const EXACT_VERSION = /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/;

const PACKAGE_JSON_KEYS = new Set(['name', 'version', 'private', 'description', 'license', 'dependencies']);
/** A registry version range (no `:` or `/`: git, URLs, paths and tags-with-slashes are not), or an `npm:name@range` alias. */
const RANGE = /^[\^~<>=*xX0-9A-Za-z.+| -]{1,128}$/;
export function registrySpec(spec: string): boolean {
  if (spec.startsWith('npm:')) {
    const at = spec.lastIndexOf('@');
    return at > 4 && NPM_NAME.test(spec.slice(4, at)) && RANGE.test(spec.slice(at + 1));
  }
  return RANGE.test(spec);
}

/** The package name of a lock path (`node_modules/a/node_modules/@s/b` → `@s/b`). */
function packageNameOf(path: string): string {
  const parts = path.split('/');
  const i = parts.lastIndexOf('node_modules');
  return parts.slice(i + 1).join('/');
}

/** `https://<registry>/<name>/-/<base>-<version>.tgz`, the only download a lock entry may name. */
export function registryTarball(url: string, name: string, version: string): boolean {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return false;
  }
  if (u.protocol !== 'https:' || u.search || u.hash || u.username || u.password) return false;
  const base = name.startsWith('@') ? name.slice(name.indexOf('/') + 1) : name;
  return u.pathname.endsWith(`/${name}/-/${base}-${version}.tgz`);
}

/** A relative path made of plain components (no `..`, `.`, empty or absolute parts). */
export function plainRelativePath(p: string, maxParts = 16): boolean {
  if (p.length === 0 || p.length > 512 || p.startsWith('/')) return false;
  const parts = p.split('/');
  return parts.length <= maxParts && parts.every((c) => c !== '' && c !== '.' && c !== '..' && /^[A-Za-z0-9@._+-]+$/.test(c));
}

export interface PinnedLock {
  /** The lock's root dependencies with their locked versions: the image's `software` metadata. */
  software: Record<string, string>;
  /** package.json and package-lock.json as read (installed from exactly these bytes). */
  packageJson: Buffer;
  lockJson: Buffer;
}

const bad = (dir: string, why: string) =>
  new BangerError('rejected_content', `the npm lock in ${dir} ${why}`, {
    fix: 'regenerate it with `npm install --package-lock-only --ignore-scripts` from exact versions (docs/config.md, "npm packages in recipes")',
  });

/**
 * Reads and checks a pinned lock: lockfile v2/v3, root dependencies at exact versions that the
 * lock holds, no linked or non-registry packages, and a sha512 integrity on every package npm
 * would download (so each tarball is verified against this file, not against the registry).
 */
export function checkPinnedLock(dir: string, packageJson: Buffer, lockJson: Buffer): PinnedLock {
  let pkg: { dependencies?: Record<string, string> };
  let lock: { lockfileVersion?: number; packages?: Record<string, Record<string, unknown>> };
  try {
    pkg = JSON.parse(packageJson.toString('utf8'));
    lock = JSON.parse(lockJson.toString('utf8'));
  } catch {
    throw bad(dir, 'or its package.json is not valid JSON');
  }
  if (lock.lockfileVersion !== 2 && lock.lockfileVersion !== 3) throw bad(dir, `has lockfileVersion ${String(lock.lockfileVersion)} (2 or 3 expected)`);
  // Anything else in package.json (overrides, optionalDependencies, workspaces…) could make npm
  // resolve packages the lock does not pin.
  for (const key of Object.keys(pkg))
    if (!PACKAGE_JSON_KEYS.has(key)) throw bad(dir, `belongs to a package.json with "${key}" (only name, version, private, dependencies)`);
  const packages = lock.packages;
  if (!packages || typeof packages !== 'object') throw bad(dir, 'has no "packages" map');
  const entries = Object.entries(packages);
  if (entries.length > MAX_LOCK_PACKAGES) throw bad(dir, `lists ${entries.length} packages (at most ${MAX_LOCK_PACKAGES})`);
  const deps = pkg.dependencies ?? {};
  if (Object.keys(deps).length === 0) throw bad(dir, 'belongs to a package.json without dependencies');
  const software: Record<string, string> = {};
  for (const [name, range] of Object.entries(deps)) {
    if (!NPM_NAME.test(name)) throw bad(dir, `names a dependency "${name}" that is not an npm package name`);
    if (typeof range !== 'string' || !EXACT_VERSION.test(range)) throw bad(dir, `pins ${name} to "${String(range)}", not an exact version`);
    const locked = packages[`node_modules/${name}`];
    if (!locked || locked.version !== range) throw bad(dir, `does not hold ${name}@${range} (package.json and the lock disagree)`);
    software[name] = range;
  }
  for (const [path, p] of entries) {
    if (path === '') continue;
    if (!path.startsWith('node_modules/') || path.split('/').includes('..')) throw bad(dir, `has a package at "${path}" outside node_modules`);
    if (p.link === true) throw bad(dir, `links ${path} to a local directory`);
    // Every dependency npm could resolve again must be a registry range: never git, a URL or a path.
    for (const field of ['dependencies', 'optionalDependencies', 'peerDependencies', 'devDependencies']) {
      const specs = p[field];
      if (specs === undefined) continue;
      if (!specs || typeof specs !== 'object') throw bad(dir, `has a malformed ${field} in ${path}`);
      for (const [dep, spec] of Object.entries(specs)) {
        if (!NPM_NAME.test(dep) || typeof spec !== 'string' || !registrySpec(spec))
          throw bad(dir, `lets ${path} depend on ${dep}@${String(spec)}, not a registry version`);
      }
    }
    if (p.inBundle === true) continue; // inside its parent's tarball, verified with it
    if (typeof p.version !== 'string' || !EXACT_VERSION.test(p.version)) throw bad(dir, `has no exact version for ${path}`);
    const resolved = p.resolved;
    if (
      resolved !== undefined &&
      (typeof resolved !== 'string' || !registryTarball(resolved, typeof p.name === 'string' ? p.name : packageNameOf(path), p.version))
    )
      throw bad(dir, `fetches ${path} from ${String(resolved)} (only registry tarballs over https are allowed)`);
    if (typeof p.integrity !== 'string' || !p.integrity.startsWith('sha512-')) throw bad(dir, `has no sha512 integrity for ${path}`);
  }
  return { software, packageJson, lockJson };
}

/** Reads `dir`'s package.json and package-lock.json without following links, bounded, then checks them. */
export async function readPinnedLock(dir: string): Promise<PinnedLock> {
  const packageJson = await readRegularNoFollow(join(dir, 'package.json'), 1024 * 1024, `package.json in ${dir}`);
  const lockJson = await readRegularNoFollow(join(dir, 'package-lock.json'), MAX_LOCK_BYTES, `package-lock.json in ${dir}`);
  return checkPinnedLock(dir, packageJson, lockJson);
}

/** npm's argv: the lock's versions only, no scripts, the guest's platform, a private cache, nothing phoned home. */
export function npmInstallArgs(cacheDir: string): string[] {
  return [
    'install',
    '--ignore-scripts',
    '--no-audit',
    '--no-fund',
    '--no-update-notifier',
    '--omit=dev',
    '--install-links=false',
    '--os=linux',
    '--cpu=x64',
    '--libc=glibc',
    '--engine-strict=false',
    // No git dependency can be fetched (the lock check refuses them; this is the second wall).
    '--git=/bin/false',
    '--loglevel=error',
    `--cache=${cacheDir}`,
  ];
}

const NPM_TIMEOUT_MS = 30 * 60_000;

/**
 * npm's environment: the daemon's, without `npm_config_*` settings it may have inherited by
 * accident (a CLI started from an `npm run` script auto-starts the daemon), except the registry;
 * scripts off and no update check whatever ~/.npmrc says.
 */
export function npmEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (!/^npm_/i.test(k)) out[k] = v;
  const registry = env.npm_config_registry ?? env.NPM_CONFIG_REGISTRY;
  if (registry) out.npm_config_registry = registry;
  return { ...out, npm_config_ignore_scripts: 'true', npm_config_update_notifier: 'false', NO_UPDATE_NOTIFIER: '1' };
}

/**
 * What npm installed, by its own record (node_modules/.package-lock.json), must be the lock's
 * packages at the lock's versions and integrity, and the lock must be as it was: nothing was
 * resolved anew.
 */
async function checkInstalled(project: string, pinned: PinnedLock): Promise<void> {
  const after = await readRegularNoFollow(join(project, 'package-lock.json'), MAX_LOCK_BYTES, 'package-lock.json after npm install');
  if (!after.equals(pinned.lockJson))
    throw new BangerError('rejected_content', 'npm changed the lock while installing it: it resolved packages the lock does not pin', {
      fix: 'regenerate the lock',
    });
  const hidden = await readRegularNoFollow(join(project, 'node_modules', '.package-lock.json'), MAX_LOCK_BYTES, 'npm’s record of the install');
  const installed = (JSON.parse(hidden.toString('utf8')) as { packages?: Record<string, Record<string, unknown>> }).packages ?? {};
  const locked = (JSON.parse(pinned.lockJson.toString('utf8')) as { packages: Record<string, Record<string, unknown>> }).packages;
  for (const [path, p] of Object.entries(installed)) {
    const l = locked[path];
    if (!l || l.version !== p.version || (p.inBundle !== true && l.integrity !== p.integrity))
      throw new BangerError('rejected_content', `npm installed ${path}@${String(p.version)}, which the lock does not pin`, { fix: 'regenerate the lock' });
  }
}

/**
 * `rel` (plain components) under `base`, checked one component at a time: every one must be a
 * real directory, never a symlink (a catalog directory could hold a link to any host directory).
 */
export async function realSubdir(base: string, rel: string, what: string): Promise<string> {
  let at = base;
  for (const c of rel.split('/')) {
    at = join(at, c);
    const st = await lstat(at).catch(() => undefined);
    if (!st?.isDirectory())
      throw new BangerError(
        'invalid_config',
        `${what} ${at} is ${st?.isSymbolicLink() ? 'a symlink (banger does not follow it)' : st ? 'not a directory' : 'missing'}`,
        {
          fix: 'give a real directory beside the catalog file',
        },
      );
  }
  return at;
}

/** Makes `rel` under `root` a directory chain of real directories (mode 0755), refusing links. */
async function realDirs(root: string, rel: string): Promise<string> {
  let at = root;
  for (const c of rel.split('/').filter(Boolean)) {
    at = join(at, c);
    const st = await lstat(at).catch(() => undefined);
    if (!st) await mkdir(at, { mode: 0o755 });
    else if (!st.isDirectory()) throw new BangerError('internal', `${at} is not a directory`);
    await chmod(at, 0o755);
  }
  return at;
}

/**
 * Everything npm wrote is readable by every guest user whatever the daemon's umask: directories
 * and executables 0755, other files 0644. Symlinks are left alone (never followed).
 */
async function normaliseModes(dir: string): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isSymbolicLink()) continue;
    if (e.isDirectory()) {
      await chmod(p, 0o755);
      await normaliseModes(p);
    } else if (e.isFile()) {
      const st = await lstat(p);
      await chmod(p, st.mode & 0o100 ? 0o755 : 0o644);
    }
  }
}

/**
 * Builds the npm layer in `layer` (a fresh directory of banger's): `<prefix>/` with package.json,
 * the lock and node_modules, the platform links, and `usr/local/bin/<bin>` links. Returns the
 * pinned software versions.
 */
export async function buildNpmLayer(
  runner: CommandRunner,
  spec: NpmLayerSpec,
  layer: string,
  npmCache: string,
  ctx: OpContext,
): Promise<Record<string, string>> {
  const pinned = await readPinnedLock(spec.dir);
  const prefixRel = spec.prefix.replace(/^\/+/, '');
  const project = await realDirs(layer, prefixRel);
  await copyFile(join(spec.dir, 'package.json'), join(project, 'package.json'), fsc.COPYFILE_EXCL);
  await copyFile(join(spec.dir, 'package-lock.json'), join(project, 'package-lock.json'), fsc.COPYFILE_EXCL);
  // The copies must be the bytes that were checked (the directory could change in between).
  const copied = await readPinnedLock(project);
  if (!copied.lockJson.equals(pinned.lockJson) || !copied.packageJson.equals(pinned.packageJson))
    throw new BangerError('conflict', `the npm lock in ${spec.dir} changed while the image was being built`, { fix: 'pull the image again' });

  const child = runner.spawn('npm', npmInstallArgs(npmCache), {
    cwd: project,
    stdin: 'ignore',
    signal: AbortSignal.any([ctx.signal, AbortSignal.timeout(NPM_TIMEOUT_MS)]),
    neededFor: 'it installs the npm packages of an image recipe (Node.js’s npm)',
    env: npmEnv(process.env),
  });
  const tail: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (line) => {
      const l = line.slice(0, 400);
      ctx.log(l);
      tail.push(l);
      if (tail.length > 20) tail.shift();
    });
  }
  const { code } = await child.done;
  if (code !== 0)
    throw new BangerError('host_command_failed', `npm install failed (exit ${code}):\n${tail.join('\n')}`, {
      fix: 'check that the npm registry is reachable (npm config get registry) and the lock names published versions',
    });

  await checkInstalled(project, pinned);
  // npm may have resolved something else than the lock says: every root dependency must be exactly as pinned.
  for (const [name, version] of Object.entries(pinned.software)) {
    const manifest = await readRegularNoFollow(join(project, 'node_modules', name, 'package.json'), 1024 * 1024, `${name}'s package.json`);
    const got = (JSON.parse(manifest.toString('utf8')) as { version?: unknown }).version;
    if (got !== version)
      throw new BangerError('rejected_content', `npm installed ${name}@${String(got)}, the lock pins ${version}`, { fix: 'regenerate the lock' });
  }

  for (const { file, target } of spec.links) {
    const filePath = join(project, file);
    const targetPath = join(project, target);
    const t = await lstat(targetPath).catch(() => undefined);
    if (!t?.isFile())
      throw new BangerError('rejected_content', `the platform binary ${target} is not in the installed packages`, {
        fix: 'check the catalog entry’s npm.links against the lock (the platform package must be an optional dependency for linux/x64/glibc)',
      });
    const f = await lstat(filePath).catch(() => undefined);
    if (f && !f.isFile()) throw new BangerError('rejected_content', `${file} is not the regular placeholder file a platform link replaces`);
    if (f) await unlink(filePath);
    await chmod(targetPath, 0o755);
    await symlink(posix.relative(posix.dirname(file), target), filePath);
  }

  await normaliseModes(project);
  const binDir = await realDirs(layer, 'usr/local/bin');
  for (const bin of spec.bins) {
    const inBin = join(project, 'node_modules', '.bin', bin);
    if (!(await lstat(inBin).catch(() => undefined))) throw new BangerError('rejected_content', `no package of the lock provides the command "${bin}"`);
    await symlink(posix.join(spec.prefix, 'node_modules', '.bin', bin), join(binDir, bin));
  }
  return pinned.software;
}

const MAX_OVERLAY_ENTRIES = 10_000;

/**
 * Copies a recipe's overlay directory (files shipped beside the catalog, e.g. the agents image's
 * tmux set-up) into the layer: directories merge, files are created exclusively (0755 when
 * executable, else 0644), symlinks are copied as links and never followed.
 */
export async function copyOverlay(src: string, layer: string): Promise<void> {
  const top = await lstat(src).catch(() => undefined);
  if (!top?.isDirectory())
    throw new BangerError('invalid_config', `the recipe overlay ${src} is not a directory`, { fix: 'check the overlay path in the image catalog' });
  let entries = 0;
  const walk = async (from: string, to: string): Promise<void> => {
    for (const e of await readdir(from, { withFileTypes: true })) {
      if (++entries > MAX_OVERLAY_ENTRIES) throw new BangerError('invalid_config', `the recipe overlay ${src} has more than ${MAX_OVERLAY_ENTRIES} entries`);
      const a = join(from, e.name);
      const b = join(to, e.name);
      if (e.isSymbolicLink()) await symlink(await readlink(a), b);
      else if (e.isDirectory()) {
        const have = await lstat(b).catch(() => undefined);
        if (!have) await mkdir(b, { mode: 0o755 });
        else if (!have.isDirectory()) throw new BangerError('invalid_config', `the recipe overlay's ${a} collides with a file of the npm layer`);
        await chmod(b, 0o755);
        await walk(a, b);
      } else if (e.isFile()) {
        // Opened without following a link swapped in since readdir, created exclusively.
        const { fh } = await openRegularNoFollow(a, 'overlay file');
        const executable = ((await fh.stat()).mode & 0o100) !== 0;
        await fh.close();
        await copyRegularNoFollow(a, b, 'overlay file', executable ? 0o755 : 0o644);
        await chmod(b, executable ? 0o755 : 0o644);
      }
    }
  };
  await walk(src, layer);
}
