import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BangerError } from '../api/errors.js';
import { decompressor } from '../archive/decompress.js';
import type { CommandRunner } from '../host/runner.js';
import { memoryBudgetOf } from '../host/scratch.js';
import type { BlobCache } from '../oci/blob-cache.js';
import { type ImageConfig, parseConfig, parseManifest, selectPlatform, type WantedPlatform } from '../oci/manifest.js';
import { formatReference } from '../oci/reference.js';
import type { RegistryClient } from '../oci/registry.js';
import { concurrencyLimit } from '../util/limit.js';
import type { OpContext } from '../util/op-context.js';
import { applyLayer, RootfsLedger, TreeOverBudget } from './layer-apply.js';

export interface FlattenOptions {
  /**
   * Makes the directory the layers are stacked in, given an estimate of the unpacked size. When a
   * memory-backed tree outgrows its budget (`memoryBudgetOf`), it is asked again with
   * `Number.MAX_SAFE_INTEGER` (i.e. "on disk"), the layers unpack again there, and the first tree
   * is removed here.
   */
  placeTree: (estimateBytes: number) => Promise<string>;
  /** Runs the CLI decompressors (zstd layers on Nodes without native zstd). */
  runner: CommandRunner;
  chownOnDisk: boolean;
  platform: WantedPlatform;
  /** Limits on the unpacked image: content bytes and entries. */
  maxBytes: number;
  maxEntries: number;
  /** Parallel layer downloads. */
  concurrency?: number;
}

export interface FlattenedImage {
  root: string;
  manifestDigest: string;
  config: ImageConfig;
  ledger: RootfsLedger;
  layers: number;
  compressedBytes: number;
}

const MAX_DOWNLOAD_ATTEMPTS = 3;

/**
 * Resolves a reference to one linux/amd64 manifest, fetches its config and layers into the blob
 * cache (in parallel, each verified against its digest), and stacks the layers onto `root` in
 * order, starting each as soon as it and the ones below it are cached. Each layer's uncompressed
 * bytes are checked against the config's diff_id as they are unpacked.
 */
export async function fetchAndFlatten(client: RegistryClient, cache: BlobCache, opts: FlattenOptions, ctx: OpContext): Promise<FlattenedImage> {
  const ref = client.ref;
  const what = formatReference(ref);
  ctx.stage('resolve', what);
  let fetched = await client.manifest(ref.digest ?? (ref.tag as string));
  let parsed = parseManifest(fetched.bytes, fetched.contentType, `manifest of ${what}`);
  if (parsed.kind === 'index') {
    const pick = selectPlatform(parsed.manifests, opts.platform, `image index of ${what}`);
    fetched = await client.manifest(pick.digest);
    parsed = parseManifest(fetched.bytes, fetched.contentType, `manifest ${pick.digest} of ${what}`);
    if (parsed.kind !== 'manifest') throw new BangerError('rejected_content', `${what}: an index inside an index is not supported`);
  }
  const manifest = parsed;
  const unpins = [manifest.config, ...manifest.layers].map((d) => cache.pin(d.digest));
  // Downloads still running when the pull fails are cut and awaited: a failed pull leaves no
  // partial file behind, and no socket still reading from the registry.
  const cutDownloads = new AbortController();
  let downloads: Promise<string>[] = [];
  try {
    const configPath = await ensureBlob(client, cache, manifest.config.digest, manifest.config.size);
    const config = parseConfig(await readFile(configPath), `config of ${what}`);
    if ((config.os && config.os !== opts.platform.os) || (config.architecture && config.architecture !== opts.platform.architecture)) {
      throw new BangerError(
        'rejected_content',
        `${what} is a ${config.os}/${config.architecture} image; banger runs ${opts.platform.os}/${opts.platform.architecture} guests`,
        {
          fix: `pick a tag built for ${opts.platform.os}/${opts.platform.architecture}`,
        },
      );
    }
    const diffIds = config.rootfs.diff_ids;
    if (diffIds.length !== manifest.layers.length) {
      throw new BangerError('rejected_content', `${what}: the config lists ${diffIds.length} layers but the manifest has ${manifest.layers.length}`);
    }

    const total = manifest.layers.reduce((n, l) => n + l.size, 0);
    ctx.stage('download layers', `${manifest.layers.length} layer(s), ${(total / 1048576).toFixed(1)} MiB`);
    let done = 0;
    const onBytes = (n: number) => {
      done += n;
      ctx.progress(done, total, 'B');
    };
    // Downloads run ahead (bounded); unpacking follows in layer order.
    const limited = concurrencyLimit(Math.max(1, opts.concurrency ?? 3));
    downloads = manifest.layers.map((l) =>
      limited(async () => {
        ctx.checkCancelled();
        cutDownloads.signal.throwIfAborted();
        return ensureBlob(client, cache, l.digest, l.size, onBytes, cutDownloads.signal);
      }),
    );
    // A failure further up must not go unobserved while unpacking is still on an earlier layer.
    for (const d of downloads) d.catch(() => {});

    // gzip'd filesystem layers unpack to ~3× their size; 4× leaves room.
    let root = await opts.placeTree(total * 4);
    let ledger = new RootfsLedger();
    let onDisk = false;
    for (let i = 0; i < manifest.layers.length; i++) {
      const l = manifest.layers[i] as (typeof manifest.layers)[number];
      await downloads[i];
      ctx.checkCancelled();
      ctx.stage('unpack layers', `${i + 1}/${manifest.layers.length} ${l.digest.slice(0, 19)}`);
      const hash = createHash('sha256');
      const tap = new Transform({
        transform(chunk: Buffer, _e, cb) {
          hash.update(chunk);
          cb(null, chunk);
        },
      });
      const label = `layer ${i + 1} (${l.digest.slice(0, 19)}) of ${what}`;
      const feeding = pipeline(cache.open(l.digest), decompressor(l.compression, opts.runner), tap);
      const applying = applyLayer(tap, { root, chownOnDisk: opts.chownOnDisk, maxBytes: opts.maxBytes, maxEntries: opts.maxEntries, label }, ledger);
      // The unpacker's error is the meaningful one; the feeder then only reports a premature close.
      const [fed, applied] = await Promise.allSettled([feeding, applying]);
      if (applied.status === 'rejected' && applied.reason instanceof TreeOverBudget && !onDisk) {
        // A bomb, or an image that compresses unusually well: RAM is not spent on it past the
        // budget. Start over on disk (every layer is cached by now, or downloading).
        onDisk = true;
        ctx.log(`the unpacked image outgrew the ${Math.round(applied.reason.budget / 1048576)} MiB of memory set aside for it; unpacking again on disk`);
        const memTree = root;
        root = await opts.placeTree(Number.MAX_SAFE_INTEGER);
        await rm(memTree, { recursive: true, force: true });
        if (memoryBudgetOf(root) !== undefined) throw applied.reason;
        ledger = new RootfsLedger();
        i = -1;
        continue;
      }
      if (applied.status === 'rejected') throw applied.reason;
      if (fed.status === 'rejected') throw corruptLayer(label, fed.reason);
      const diffId = `sha256:${hash.digest('hex')}`;
      if (diffId !== diffIds[i]) {
        throw new BangerError('rejected_content', `${label}: uncompressed content hashes to ${diffId}, the config says ${diffIds[i]}`, {
          fix: 'the image is corrupt or was tampered with',
        });
      }
    }
    return { root, manifestDigest: fetched.digest, config, ledger, layers: manifest.layers.length, compressedBytes: total };
  } catch (e) {
    cutDownloads.abort();
    await Promise.allSettled(downloads);
    throw e;
  } finally {
    for (const u of unpins) u();
  }
}

async function ensureBlob(
  client: RegistryClient,
  cache: BlobCache,
  digest: string,
  size: number,
  onBytes?: (n: number) => void,
  cut?: AbortSignal,
): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    let counted = 0;
    try {
      return await cache.ensure(
        digest,
        size,
        async () => {
          const body = await client.blob(digest);
          // Destroying the body fails the cache's pipeline, which removes its partial file.
          if (cut?.aborted) body.destroy(new Error('the pull failed elsewhere'));
          else cut?.addEventListener('abort', () => body.destroy(new Error('the pull failed elsewhere')), { once: true });
          return body;
        },
        (n) => {
          counted += n;
          onBytes?.(n);
        },
      );
    } catch (e) {
      // Only transport failures are retried; bad content is final.
      onBytes?.(-counted);
      if (cut?.aborted || !(e instanceof BangerError) || e.code !== 'upstream_failed' || attempt >= MAX_DOWNLOAD_ATTEMPTS) throw e;
    }
  }
}

function corruptLayer(label: string, e: unknown): unknown {
  if (e instanceof BangerError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new BangerError('rejected_content', `${label} could not be decompressed: ${msg}`, { fix: 'the layer is corrupt; pull again' });
}
