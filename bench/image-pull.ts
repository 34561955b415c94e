import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { imageSizeFor } from '../src/images/rootfs-build.js';
import { guestAssets } from '../test/helpers/banger.js';
import { buildLayerFromTar, type FileLayer, pushImage } from '../test/helpers/oci-fixtures.js';
import { type LocalRegistry, startRegistry } from '../test/helpers/oci-registry.js';
import { BANGER, daemonHome } from './home.js';
import { type Benchmark, run } from './lib.js';

/** The ext4 size banger would pick for this tarball's content (its own sizing rule). */
async function sizeForTar(path: string): Promise<number> {
  const content = { bytes: 0, entries: 0 };
  const ex = tar.extract();
  const done = (async () => {
    for await (const e of ex) {
      content.entries++;
      if (e.header.type === 'file' || e.header.type === 'contiguous-file') content.bytes += e.header.size ?? 0;
      e.resume();
    }
  })();
  await Promise.all([pipeline(createReadStream(path), ex), done]);
  return imageSizeFor(content);
}

/** A fresh BANGER_HOME with a started daemon and the test kernel imported (all unmeasured). */
async function freshHome(kernelDir: string): Promise<ReturnType<typeof daemonHome>> {
  const h = daemonHome();
  await h.setup();
  await run(process.execPath, [BANGER, 'kernel', 'import', 'k', '--from', kernelDir], h.env(), 300_000);
  return h;
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
  let home: ReturnType<typeof daemonHome> | undefined;
  let baseDir = '';
  let n = 0;
  return {
    name: 'image-pull',
    needsGuestAssets: true,
    description: '`banger image pull` of the Debian rootfs (1 gzip layer, local registry) vs skopeo copy + umoci unpack + mkfs.ext4 -d',
    target: 0.7,
    rounds: 5,
    warmup: 1,
    async setup() {
      const a = guestAssets();
      if (!a?.rootfsTar) throw new Error('guest assets (with rootfsTar) missing: run scripts/guest-assets.sh');
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
      await run(process.execPath, [BANGER, 'image', 'pull', ref, '--name', `bench-${n}`, '--kernel-ref', 'k', '--json'], home.env(), 900_000);
    },
    async baseline() {
      baseDir = await mkdtemp('/tmp/bg-bpull-base-');
      await run(
        'skopeo',
        ['--insecure-policy', 'copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(baseDir, 'layout')}:latest`],
        process.env,
        900_000,
      );
      await run('umoci', ['unpack', '--image', `${join(baseDir, 'layout')}:latest`, join(baseDir, 'bundle')], process.env, 900_000);
      const img = join(baseDir, 'rootfs.ext4');
      await writeFile(img, '');
      await run('mkfs.ext4', ['-q', '-F', '-d', join(baseDir, 'bundle', 'rootfs'), img, `${sizeBytes / 1024 ** 2}M`], process.env, 900_000);
    },
    async cleanup() {
      // Cold caches for the next round: a new home (empty blob cache, no images), a new layout.
      await home?.teardown();
      home = undefined;
      if (baseDir) await rm(baseDir, { recursive: true, force: true });
      baseDir = '';
      home = await freshHome(kernelDir);
    },
    async teardown() {
      await home?.teardown();
      home = undefined;
      if (baseDir) await rm(baseDir, { recursive: true, force: true });
      await layer?.cleanup();
      await reg?.stop();
      reg = undefined;
    },
  };
}
