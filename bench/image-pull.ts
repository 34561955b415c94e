import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import * as tar from 'tar-stream';
import { buildLayerFromTar, type FileLayer, pushImage } from '../test/helpers/oci-fixtures.js';
import { type LocalRegistry, startRegistry } from '../test/helpers/oci-registry.js';
import { type Benchmark, run } from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BANGER = join(ROOT, 'bin', 'banger.js');
const GIB = 1024 ** 3;
const MIB = 1024 ** 2;
/** banger's sizing rule (src/images/rootfs-build.ts): per-entry overhead, content × 1.5, 1 GiB floor. */
const PER_ENTRY = 4096;

interface PullAssets {
  kernelDir: string;
  rootfsTar: string;
}

function pullAssets(): PullAssets {
  const manifest = join(process.env.BANGER_ASSET_CACHE ?? join(homedir(), '.cache', 'banger-test-assets'), 'assets.json');
  if (!existsSync(manifest)) throw new Error(`guest assets missing (${manifest}): run scripts/guest-assets.sh`);
  const a = JSON.parse(readFileSync(manifest, 'utf8')) as Partial<PullAssets>;
  if (!a.kernelDir || !a.rootfsTar || !existsSync(a.rootfsTar)) throw new Error(`${manifest} has no rootfsTar (or it is gone): rerun scripts/guest-assets.sh`);
  return { kernelDir: a.kernelDir, rootfsTar: a.rootfsTar };
}

/** The ext4 size banger would pick for this tarball's content. */
async function sizeForTar(path: string): Promise<number> {
  let bytes = 0;
  let entries = 0;
  const ex = tar.extract();
  const done = (async () => {
    for await (const e of ex) {
      entries++;
      if (e.header.type === 'file' || e.header.type === 'contiguous-file') bytes += e.header.size;
      e.resume();
    }
  })();
  await Promise.all([pipeline(createReadStream(path), ex), done]);
  return Math.ceil(Math.max((bytes + entries * PER_ENTRY) * 1.5, GIB) / MIB) * MIB;
}

/** A fresh BANGER_HOME with a started daemon and the test kernel imported (all unmeasured). */
async function freshHome(kernelDir: string): Promise<{ dir: string; env: NodeJS.ProcessEnv }> {
  // Short path: the daemon socket must fit in 108 bytes.
  const dir = await mkdtemp('/tmp/bg-bpull-');
  const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: dir };
  delete env.BANGER_CONFIG;
  await run(process.execPath, [BANGER, 'daemon', 'start', '--json'], env, 60_000);
  await run(process.execPath, [BANGER, 'kernel', 'import', 'k', '--from', kernelDir], env, 300_000);
  return { dir, env };
}

async function dropHome(h: { dir: string; env: NodeJS.ProcessEnv } | undefined): Promise<void> {
  if (!h) return;
  await run(process.execPath, [BANGER, 'daemon', 'stop'], h.env, 60_000).catch(() => '');
  await rm(h.dir, { recursive: true, force: true });
}

/**
 * `banger image pull` of the Debian test rootfs (one gzip layer, from a local docker-registry)
 * against skopeo copy + umoci unpack + mkfs.ext4 -d of the same image to an ext4 of the same size.
 * Both sides start cold each round: a fresh BANGER_HOME (empty blob cache), a fresh OCI layout.
 */
export function imagePullBenchmark(): Benchmark {
  let reg: LocalRegistry | undefined;
  let layer: FileLayer | undefined;
  let ref = '';
  let sizeBytes = 0;
  let kernelDir = '';
  let home: { dir: string; env: NodeJS.ProcessEnv } | undefined;
  let baseDir = '';
  let n = 0;
  return {
    name: 'image-pull',
    description: '`banger image pull` of the Debian rootfs (1 gzip layer, local registry) vs skopeo copy + umoci unpack + mkfs.ext4 -d',
    target: 0.7,
    rounds: 5,
    warmup: 1,
    async setup() {
      const a = pullAssets();
      kernelDir = a.kernelDir;
      sizeBytes = await sizeForTar(a.rootfsTar);
      reg = await startRegistry();
      layer = await buildLayerFromTar(a.rootfsTar, 'gzip');
      await pushImage(reg.url, 'bench/debian', 'latest', {
        layers: [layer],
        config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/bash'] },
        architecture: 'amd64',
        os: 'linux',
        manifestFormat: 'oci',
      });
      // The registry holds its own copy now.
      await layer.cleanup();
      layer = undefined;
      ref = `${reg.host}/bench/debian:latest`;
      home = await freshHome(kernelDir);
    },
    async candidate() {
      if (!home) throw new Error('no banger home');
      n++;
      await run(process.execPath, [BANGER, 'image', 'pull', ref, '--name', `bench-${n}`, '--kernel-ref', 'k', '--json'], home.env, 900_000);
    },
    async baseline() {
      baseDir = await mkdtemp('/tmp/bg-bpull-base-');
      await run('skopeo', ['--insecure-policy', 'copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(baseDir, 'layout')}:latest`], process.env, 900_000);
      await run('umoci', ['unpack', '--image', `${join(baseDir, 'layout')}:latest`, join(baseDir, 'bundle')], process.env, 900_000);
      const img = join(baseDir, 'rootfs.ext4');
      await writeFile(img, '');
      await run('mkfs.ext4', ['-q', '-F', '-d', join(baseDir, 'bundle', 'rootfs'), img, `${sizeBytes / MIB}M`], process.env, 900_000);
    },
    async cleanup() {
      // Cold caches for the next round: a new home (empty blob cache, no images), a new layout.
      await dropHome(home);
      home = undefined;
      if (baseDir) await rm(baseDir, { recursive: true, force: true });
      baseDir = '';
      home = await freshHome(kernelDir);
    },
    async teardown() {
      await dropHome(home);
      home = undefined;
      if (baseDir) await rm(baseDir, { recursive: true, force: true });
      await layer?.cleanup();
      await reg?.stop();
      reg = undefined;
    },
  };
}
