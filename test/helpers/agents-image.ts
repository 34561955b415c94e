/**
 * The agents image (`debian-bookworm-agents`) for the end-to-end tests, built once from the real
 * registries (Debian's mirror, the npm registry) through banger's own `image pull`, and kept
 * OUTSIDE the clone in a banger home under the asset cache, keyed by everything the build reads:
 * the pinned npm lock, the overlay files, the catalog entry, the recipe's packages and hook, and the
 * host code that builds it (npm-layer, recipe, layer-apply). A
 * change to any of them builds a new one; other keys are removed once unused for a day.
 *
 * The home's directory is long (under ~/.cache); VM sockets must fit in 108 bytes, so banger sees
 * it through a short symlink in /tmp (the paths it records are the symlink's, stable per key).
 * Completion is marked by a `ready` file written last: a killed build is thrown away and redone.
 */
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { mkdir, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { BUILTIN_ASSETS_DIR, BUILTIN_IMAGES, DEV_PACKAGES } from '../../src/images/catalog.js';
import { tuneHook } from '../../src/images/recipe.js';
import { AGENTS_IMAGE_NAME } from '../../src/util/coding-agents.js';
import { type GuestAssets, ROOT, TestHome } from './banger.js';

const cacheRoot = () => process.env.BANGER_ASSET_CACHE ?? join(homedir(), '.cache', 'banger-test-assets');

/** Hash of a directory tree: names, types, modes, link targets and contents, in a stable order. */
function hashTree(h: ReturnType<typeof createHash>, dir: string, rel = ''): void {
  for (const name of readdirSync(join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const st = lstatSync(join(dir, r));
    h.update(`${r}\0${st.mode}\0`);
    if (st.isSymbolicLink()) h.update(readlinkSync(join(dir, r)));
    else if (st.isDirectory()) hashTree(h, dir, r);
    else h.update(readFileSync(join(dir, r)));
    h.update('\0');
  }
}

/** The cache key of the agents image: what its build reads, hashed. */
export function agentsImageKey(): string {
  const entry = BUILTIN_IMAGES.find((e) => e.name === AGENTS_IMAGE_NAME);
  if (entry?.source.kind !== 'recipe' || !entry.source.npm) throw new Error(`no built-in recipe ${AGENTS_IMAGE_NAME}`);
  const h = createHash('sha256');
  h.update(JSON.stringify(entry));
  h.update(JSON.stringify(DEV_PACKAGES));
  h.update(tuneHook());
  const npmDir = join(BUILTIN_ASSETS_DIR, entry.source.npm.dir);
  h.update(readFileSync(join(npmDir, 'package.json')));
  h.update(readFileSync(join(npmDir, 'package-lock.json')));
  if (entry.source.overlay) hashTree(h, join(BUILTIN_ASSETS_DIR, entry.source.overlay));
  // And the code that builds it on the host (a change to the npm step must be proven on the real registry).
  for (const f of ['npm-layer.js', 'recipe.js', 'layer-apply.js']) h.update(readFileSync(join(ROOT, 'dist', 'src', 'images', f)));
  return h.digest('hex').slice(0, 16);
}

/** Removes other keys' homes unused for a day (a concurrent run of another checkout may still use a newer one). */
function pruneOld(keep: string): void {
  const root = cacheRoot();
  for (const name of readdirSync(root)) {
    if (!name.startsWith('agents-home-') || join(root, name) === keep) continue;
    const age = Date.now() - statSync(join(root, name)).mtimeMs;
    if (age > 24 * 3600_000) rm(join(root, name), { recursive: true, force: true }).catch(() => {});
  }
}

export interface AgentsImageHome {
  /** The short path banger uses as BANGER_HOME (a symlink to the cached directory). */
  home: string;
  key: string;
  /** True when this call built the image (a cold cache). */
  built: boolean;
}

/**
 * The cached home holding the pulled agents image; builds it when missing. The build runs in the
 * host's network namespace (it needs the mirror and the registry) and boots nothing.
 */
export async function ensureAgentsImageHome(assets: GuestAssets, log: (s: string) => void = () => {}): Promise<AgentsImageHome> {
  const key = agentsImageKey();
  const dir = join(cacheRoot(), `agents-home-${key}`);
  const home = `/tmp/bg-agents-${key.slice(0, 8)}`;
  const link = lstatSync(home, { throwIfNoEntry: false });
  if (link && !(link.isSymbolicLink() && readlinkSync(home) === dir)) {
    if (!link.isSymbolicLink()) throw new Error(`${home} exists and is not banger's symlink: remove it`);
    await unlink(home);
  }
  if (!lstatSync(home, { throwIfNoEntry: false })) {
    await mkdir(dir, { recursive: true });
    await symlink(dir, home);
  }
  pruneOld(dir);
  if (existsSync(join(dir, 'ready'))) {
    await utimes(dir, new Date(), new Date());
    return { home, key, built: false };
  }
  log(`building ${AGENTS_IMAGE_NAME} (key ${key}) in ${dir}: a cold cache, a few minutes`);
  // A build cut short leaves no `ready`: start from nothing.
  for (const e of readdirSync(dir)) await rm(join(dir, e), { recursive: true, force: true });
  const th = await TestHome.reuse(home, 'accel = "tcg"\n');
  try {
    for (const args of [
      ['kernel', 'import', 'debian-cloud', '--from', assets.kernelDir],
      ['image', 'pull', AGENTS_IMAGE_NAME],
    ]) {
      const r = await th.banger(args, 40 * 60_000);
      if (r.code !== 0) throw new Error(`banger ${args.join(' ')} exited ${r.code}\n${r.stderr.slice(-4000)}`);
      log(r.stderr.slice(-2000));
    }
    await th.banger(['daemon', 'stop'], 60_000);
  } finally {
    await th.destroy();
  }
  await writeFile(join(dir, 'ready'), `${new Date().toISOString()}\n`);
  return { home, key, built: true };
}
