// Builders for OCI/Docker images used by the image-pull tests: layers (tar + gzip/zstd/none),
// image configs, manifests and indexes, pushed to a real registry (see oci-registry.ts) or served
// by a fake one that can misbehave on purpose (truncated bodies, wrong digests, token auth).
import { spawn, spawnSync } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { PassThrough, type Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import * as tar from 'tar-stream';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export type Compression = 'gzip' | 'zstd' | 'none';
export type ManifestFormat = 'oci' | 'docker';

/** A fixed mtime so layers (and so digests) are reproducible. */
export const FIXED_MTIME = new Date('2024-01-01T00:00:00Z');

/** A tar header as tar-stream takes it (only `name` is required). */
export type TarHeader = Partial<tar.Header> & { name: string };

export type LayerEntry =
  | { type: 'file'; path: string; content: Buffer | string; mode?: number; uid?: number; gid?: number; mtime?: Date }
  | { type: 'dir'; path: string; mode?: number; uid?: number; gid?: number; mtime?: Date }
  | { type: 'symlink'; path: string; target: string; uid?: number; gid?: number }
  | { type: 'hardlink'; path: string; target: string }
  /** Deletes `path` from lower layers: emitted as `<dirname>/.wh.<basename>`. */
  | { type: 'whiteout'; path: string }
  /** Hides everything lower layers put in `dir`: emitted as `<dir>/.wh..wh..opq`. */
  | { type: 'opaque'; dir: string }
  /** Escape hatch for hostile entries (`../` names, absolute paths, devices, odd types): written as given. */
  | { type: 'raw'; header: TarHeader; content?: Buffer | string };

/** A layer blob in memory. */
export interface Layer {
  blob: Buffer;
  /** sha256 of the blob as stored (compressed). */
  digest: string;
  /** sha256 of the uncompressed tar. */
  diffId: string;
  mediaType: string;
  size: number;
}

/** A layer blob in a temp file (big layers); `cleanup()` removes it. */
export interface FileLayer {
  path: string;
  digest: string;
  diffId: string;
  mediaType: string;
  size: number;
  cleanup(): Promise<void>;
}

export type AnyLayer = Layer | FileLayer;

export interface LayerOptions {
  /** Docker v2 media types (`application/vnd.docker.image.rootfs.diff.tar[.gzip]`); zstd has none and stays OCI. */
  docker?: boolean;
  /** Overrides the media type outright (e.g. a foreign or unknown one). */
  mediaType?: string;
}

export const sha256 = (data: Buffer | string): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

export function layerMediaType(compression: Compression, opts: LayerOptions = {}): string {
  if (opts.mediaType) return opts.mediaType;
  if (opts.docker && compression === 'gzip') return MEDIA.dockerLayerGzip;
  if (opts.docker && compression === 'none') return MEDIA.dockerLayer;
  return compression === 'gzip' ? MEDIA.ociLayerGzip : compression === 'zstd' ? MEDIA.ociLayerZstd : MEDIA.ociLayer;
}

function posixDirname(p: string): string {
  const trimmed = p.replace(/\/+$/, '');
  const i = trimmed.lastIndexOf('/');
  return i < 0 ? '' : trimmed.slice(0, i);
}
function posixBasename(p: string): string {
  const trimmed = p.replace(/\/+$/, '');
  return trimmed.slice(trimmed.lastIndexOf('/') + 1);
}

function headerFor(e: LayerEntry): { header: TarHeader; content?: Buffer | string } {
  switch (e.type) {
    case 'file':
      return {
        header: { name: e.path, type: 'file', mode: e.mode ?? 0o644, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME },
        content: e.content,
      };
    case 'dir':
      return { header: { name: e.path, type: 'directory', mode: e.mode ?? 0o755, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME } };
    case 'symlink':
      return { header: { name: e.path, type: 'symlink', linkname: e.target, mode: 0o777, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: FIXED_MTIME } };
    case 'hardlink':
      return { header: { name: e.path, type: 'link', linkname: e.target, mode: 0o644, mtime: FIXED_MTIME } };
    case 'whiteout': {
      const dir = posixDirname(e.path);
      const name = `${dir ? `${dir}/` : ''}.wh.${posixBasename(e.path)}`;
      return { header: { name, type: 'file', mode: 0o644, mtime: FIXED_MTIME }, content: Buffer.alloc(0) };
    }
    case 'opaque': {
      const dir = e.dir.replace(/\/+$/, '');
      return { header: { name: `${dir ? `${dir}/` : ''}.wh..wh..opq`, type: 'file', mode: 0o644, mtime: FIXED_MTIME }, content: Buffer.alloc(0) };
    }
    case 'raw':
      return { header: { mtime: FIXED_MTIME, ...e.header }, content: e.content };
  }
}

/** The uncompressed tar of `entries`, in order. */
export async function buildTar(entries: LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    const { header, content } = headerFor(e);
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (content !== undefined) pack.entry(header, typeof content === 'string' ? Buffer.from(content) : content, cb);
      else pack.entry(header, cb);
    });
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

type ZstdZlib = { zstdCompressSync?: (b: Buffer) => Buffer; createZstdCompress?: () => Transform };
const zz = zlib as unknown as ZstdZlib;

function zstdSync(data: Buffer): Buffer {
  if (zz.zstdCompressSync) return zz.zstdCompressSync(data);
  const r = spawnSync('zstd', ['-q', '-c'], { input: data, maxBuffer: 1024 ** 3 });
  if (r.error) throw new Error(`zstd CLI unavailable (apt-get install zstd): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`zstd exited ${r.status}: ${r.stderr.toString()}`);
  return r.stdout;
}

export function compress(data: Buffer, compression: Compression): Buffer {
  if (compression === 'gzip') return zlib.gzipSync(data);
  if (compression === 'zstd') return zstdSync(data);
  return data;
}

/** A layer from entries, compressed in memory. */
export async function buildLayer(entries: LayerEntry[], compression: Compression, opts: LayerOptions = {}): Promise<Layer> {
  const raw = await buildTar(entries);
  const blob = compress(raw, compression);
  return { blob, digest: sha256(blob), diffId: sha256(raw), mediaType: layerMediaType(compression, opts), size: blob.length };
}

/** Passes data through, hashing and counting it. */
class Tap extends Transform {
  readonly hash: Hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

/** A streaming compressor: zlib gzip/zstd, or the zstd CLI as a duplex-like pair. */
function compressor(compression: Compression, gzipLevel: number): { input: Writable; output: Readable; done: Promise<void> } {
  if (compression === 'gzip') {
    const z = zlib.createGzip({ level: gzipLevel });
    return { input: z, output: z, done: Promise.resolve() };
  }
  if (compression === 'zstd' && zz.createZstdCompress) {
    const z = zz.createZstdCompress();
    return { input: z, output: z, done: Promise.resolve() };
  }
  if (compression === 'zstd') {
    const child = spawn('zstd', ['-q', '-c', '-T0'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c) => {
      err += c;
    });
    const done = new Promise<void>((resolve, reject) => {
      child.on('error', (e) => reject(new Error(`zstd CLI unavailable (apt-get install zstd): ${e.message}`)));
      child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`zstd exited ${code}: ${err}`))));
    });
    return { input: child.stdin, output: child.stdout, done };
  }
  const p = new PassThrough();
  return { input: p, output: p, done: Promise.resolve() };
}

/**
 * A layer from an existing (big) tarball, streamed: compressed (gzip level 1 by default, or zstd)
 * to a temp file while both digests are computed. Call `cleanup()` when done.
 */
export async function buildLayerFromTar(
  tarPath: string,
  compression: Compression,
  opts: LayerOptions & { gzipLevel?: number; tmpDir?: string } = {},
): Promise<FileLayer> {
  const dir = await mkdtemp(join(opts.tmpDir ?? '/tmp', 'bg-layer-'));
  const out = join(dir, 'blob');
  const raw = new Tap();
  const packed = new Tap();
  const c = compressor(compression, opts.gzipLevel ?? 1);
  try {
    if ((c.input as unknown) === c.output) await pipeline(createReadStream(tarPath), raw, c.input as Transform, packed, createWriteStream(out));
    else await Promise.all([pipeline(createReadStream(tarPath), raw, c.input), pipeline(c.output, packed, createWriteStream(out)), c.done]);
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    path: out,
    digest: `sha256:${packed.hash.digest('hex')}`,
    diffId: `sha256:${raw.hash.digest('hex')}`,
    mediaType: layerMediaType(compression, opts),
    size: packed.bytes,
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

export interface ImageConfigFields {
  Env?: string[];
  Cmd?: string[];
  Entrypoint?: string[];
  WorkingDir?: string;
  User?: string;
  [k: string]: unknown;
}

export interface ImageSpec {
  layers: AnyLayer[];
  config?: ImageConfigFields;
  architecture?: string;
  os?: string;
  variant?: string;
  manifestFormat?: ManifestFormat;
  /** Overrides the generated config JSON (e.g. wrong diff_ids); written as is. */
  rawConfig?: unknown;
}

export interface BuiltImage {
  manifest: Buffer;
  manifestDigest: string;
  manifestMediaType: string;
  config: Buffer;
  configDigest: string;
  configMediaType: string;
  layers: AnyLayer[];
}

/** The config and manifest of an image (nothing pushed). */
export function buildImage(spec: ImageSpec): BuiltImage {
  const docker = spec.manifestFormat === 'docker';
  const configJson = spec.rawConfig ?? {
    created: FIXED_MTIME.toISOString(),
    architecture: spec.architecture ?? 'amd64',
    os: spec.os ?? 'linux',
    ...(spec.variant ? { variant: spec.variant } : {}),
    config: spec.config ?? {},
    rootfs: { type: 'layers', diff_ids: spec.layers.map((l) => l.diffId) },
    history: spec.layers.map(() => ({ created: FIXED_MTIME.toISOString(), created_by: 'banger test fixture' })),
  };
  const config = Buffer.from(JSON.stringify(configJson));
  const configDigest = sha256(config);
  const configMediaType = docker ? MEDIA.dockerConfig : MEDIA.ociConfig;
  const manifestMediaType = docker ? MEDIA.dockerManifest : MEDIA.ociManifest;
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: { mediaType: configMediaType, digest: configDigest, size: config.length },
      layers: spec.layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
  return { manifest, manifestDigest: sha256(manifest), manifestMediaType, config, configDigest, configMediaType, layers: spec.layers };
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** An index (OCI) or manifest list (Docker) body. */
export function buildIndex(
  entries: Array<{ digest: string; size: number; mediaType: string; platform: Platform }>,
  format: ManifestFormat,
): { body: Buffer; digest: string; mediaType: string } {
  const mediaType = format === 'docker' ? MEDIA.dockerList : MEDIA.ociIndex;
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      manifests: entries.map((e) => ({ mediaType: e.mediaType, digest: e.digest, size: e.size, platform: e.platform })),
    }),
  );
  return { body, digest: sha256(body), mediaType };
}

// ---------------------------------------------------------------------------------------------
// Registry client (push side): plain HTTP, monolithic uploads.

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

function baseUrl(registry: string): string {
  return /^https?:\/\//.test(registry) ? registry.replace(/\/+$/, '') : `http://${registry}`;
}

/** One HTTP request; `body` is a buffer or `{ path }` (streamed from the file with its length). */
export async function http(method: string, url: string, headers: Record<string, string> = {}, body?: Buffer | { path: string }): Promise<HttpResult> {
  const length = body === undefined ? 0 : Buffer.isBuffer(body) ? body.length : (await stat(body.path)).size;
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      { method, headers: { ...headers, ...(body !== undefined || method === 'PUT' || method === 'POST' ? { 'Content-Length': String(length) } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      },
    );
    req.on('error', reject);
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else pipeline(createReadStream(body.path), req).catch(reject);
  });
}

function expect(r: HttpResult, ok: number[], what: string): HttpResult {
  if (!ok.includes(r.status)) throw new Error(`${what}: HTTP ${r.status}: ${r.body.toString('utf8').slice(0, 500)}`);
  return r;
}

/** Uploads one blob (skipped when the registry already has it). Monolithic: POST, then PUT with the digest. */
export async function pushBlob(registryUrl: string, repo: string, blob: Buffer | { path: string }, digest?: string): Promise<string> {
  const base = baseUrl(registryUrl);
  const d = digest ?? (Buffer.isBuffer(blob) ? sha256(blob) : undefined);
  if (!d) throw new Error('pushBlob: a file blob needs its digest');
  const head = await http('HEAD', `${base}/v2/${repo}/blobs/${d}`);
  if (head.status === 200) return d;
  const start = expect(await http('POST', `${base}/v2/${repo}/blobs/uploads/`), [202], `start upload to ${repo}`);
  const location = start.headers.location;
  if (!location) throw new Error(`start upload to ${repo}: no Location header`);
  const loc = new URL(location, `${base}/`);
  loc.searchParams.set('digest', d);
  expect(await http('PUT', loc.toString(), { 'Content-Type': 'application/octet-stream' }, blob), [201], `upload blob ${d} to ${repo}`);
  return d;
}

/** PUTs any manifest body; never throws on an HTTP error status (hostile manifests may be refused). */
export async function pushRaw(
  registryUrl: string,
  repo: string,
  ref: string,
  body: Buffer | string,
  contentType: string,
): Promise<HttpResult & { digest?: string }> {
  const r = await http('PUT', `${baseUrl(registryUrl)}/v2/${repo}/manifests/${ref}`, { 'Content-Type': contentType }, Buffer.from(body));
  const digest = r.headers['docker-content-digest'];
  return typeof digest === 'string' ? { ...r, digest } : r;
}

export interface PushImageOptions extends ImageSpec {}

export interface PushedImage {
  manifestDigest: string;
  configDigest: string;
  manifestMediaType: string;
  manifestSize: number;
}

/**
 * Pushes layers, config and manifest. `tag` null pushes the manifest by digest only (e.g. the
 * platform manifests of an index).
 */
export async function pushImage(registryUrl: string, repo: string, tag: string | null, spec: PushImageOptions): Promise<PushedImage> {
  const img = buildImage(spec);
  for (const l of img.layers) await pushBlob(registryUrl, repo, 'blob' in l ? l.blob : { path: l.path }, l.digest);
  await pushBlob(registryUrl, repo, img.config, img.configDigest);
  const r = await pushRaw(registryUrl, repo, tag ?? img.manifestDigest, img.manifest, img.manifestMediaType);
  expect(r, [201], `push manifest ${repo}:${tag ?? img.manifestDigest}`);
  if (r.digest && r.digest !== img.manifestDigest) throw new Error(`registry computed manifest digest ${r.digest}, expected ${img.manifestDigest}`);
  return { manifestDigest: img.manifestDigest, configDigest: img.configDigest, manifestMediaType: img.manifestMediaType, manifestSize: img.manifest.length };
}

/**
 * Pushes a multi-arch index (OCI) or manifest list (Docker) over manifests already in `repo`
 * (push them with pushImage first; their size and media type are read back from the registry).
 */
export async function pushIndex(
  registryUrl: string,
  repo: string,
  tag: string,
  manifests: Array<{ manifestDigest: string; platform: Platform }>,
  format: ManifestFormat = 'oci',
): Promise<{ indexDigest: string; mediaType: string }> {
  const base = baseUrl(registryUrl);
  const entries = [];
  for (const m of manifests) {
    const r = expect(
      await http('GET', `${base}/v2/${repo}/manifests/${m.manifestDigest}`, { Accept: [MEDIA.ociManifest, MEDIA.dockerManifest].join(', ') }),
      [200],
      `manifest ${m.manifestDigest}`,
    );
    const mediaType = (JSON.parse(r.body.toString('utf8')) as { mediaType?: string }).mediaType ?? String(r.headers['content-type']);
    entries.push({ digest: m.manifestDigest, size: r.body.length, mediaType, platform: m.platform });
  }
  const idx = buildIndex(entries, format);
  expect(await pushRaw(registryUrl, repo, tag, idx.body, idx.mediaType), [201], `push index ${repo}:${tag}`);
  return { indexDigest: idx.digest, mediaType: idx.mediaType };
}

// ---------------------------------------------------------------------------------------------
// A fake registry: a loopback HTTP server with scripted answers, for what a real registry never does.

export interface FakeRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
}

export interface FakeResponse {
  status?: number;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Announces the full Content-Length, sends only this many bytes, then destroys the socket. */
  truncateAt?: number;
  /** Waits this long before answering. */
  delayMs?: number;
}

export type FakeHandler = (req: FakeRequest) => FakeResponse | Promise<FakeResponse>;

export interface FakeRegistryOptions {
  /** Keyed by `"METHOD /path"` or just `"/path"` (any method; HEAD gets a GET route's headers without its body). */
  routes: Record<string, FakeResponse | FakeHandler>;
  /** Answers unmatched requests (default: 404 with a registry-style error body). */
  fallback?: FakeHandler;
  /**
   * Docker Hub style token auth: every /v2/ request without `Authorization: Bearer <token>` gets a
   * 401 Bearer challenge pointing at `/token` on this server, which hands out `token`.
   */
  auth?: {
    token: string;
    service?: string;
    /** When set, the token endpoint demands these Basic credentials (as from ~/.docker/config.json). */
    basic?: { username: string; password: string };
    /** Key of the token in the token endpoint's JSON (default 'token'; Docker Hub sends both). */
    tokenField?: 'token' | 'access_token';
  };
}

export interface FakeRegistry {
  host: string;
  url: string;
  /** Every request received, in order (token endpoint included). */
  requests: FakeRequest[];
  stop(): Promise<void>;
}

/** `{ errors: [...] }` as the distribution spec shapes it. */
export function registryError(status: number, code: string, message: string): FakeResponse {
  return { status, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ errors: [{ code, message }] }) };
}

export function manifestResponse(body: Buffer | string, mediaType: string, digest?: string): FakeResponse {
  const b = Buffer.from(body);
  return { status: 200, headers: { 'Content-Type': mediaType, 'Docker-Content-Digest': digest ?? sha256(b) }, body: b };
}

export function blobResponse(body: Buffer | string, digest?: string): FakeResponse {
  const b = Buffer.from(body);
  return { status: 200, headers: { 'Content-Type': 'application/octet-stream', 'Docker-Content-Digest': digest ?? sha256(b) }, body: b };
}

/** The routes that serve a built image (in-memory layers only) under `repo:tag` and by digest. */
export function imageRoutes(repo: string, tag: string, img: BuiltImage): Record<string, FakeResponse> {
  const routes: Record<string, FakeResponse> = {};
  const m = manifestResponse(img.manifest, img.manifestMediaType, img.manifestDigest);
  routes[`/v2/${repo}/manifests/${tag}`] = m;
  routes[`/v2/${repo}/manifests/${img.manifestDigest}`] = m;
  routes[`/v2/${repo}/blobs/${img.configDigest}`] = blobResponse(img.config, img.configDigest);
  for (const l of img.layers) {
    if (!('blob' in l)) throw new Error('imageRoutes: file layers are not supported (use in-memory layers)');
    routes[`/v2/${repo}/blobs/${l.digest}`] = blobResponse(l.blob, l.digest);
  }
  return routes;
}

function repoOf(path: string): string | undefined {
  return /^\/v2\/(.+)\/(?:manifests|blobs|tags)\//.exec(path)?.[1];
}

export async function startFakeRegistry(opts: FakeRegistryOptions): Promise<FakeRegistry> {
  const requests: FakeRequest[] = [];
  let url = '';
  const send = async (res: ServerResponse, r: FakeResponse, head: boolean) => {
    if (r.delayMs) await new Promise((resolve) => setTimeout(resolve, r.delayMs));
    const body = r.body === undefined ? Buffer.alloc(0) : Buffer.from(r.body);
    const headers: Record<string, string> = { 'Docker-Distribution-API-Version': 'registry/2.0', 'Content-Length': String(body.length), ...r.headers };
    res.writeHead(r.status ?? 200, headers);
    if (head) return void res.end();
    if (r.truncateAt !== undefined) {
      res.write(body.subarray(0, r.truncateAt), () => {
        res.socket?.destroy();
      });
      return;
    }
    res.end(body);
  };
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const u = new URL(req.url ?? '/', url);
    const fr: FakeRequest = { method: req.method ?? 'GET', path: u.pathname, query: u.searchParams, headers: req.headers };
    requests.push(fr);
    for await (const _ of req) {
      /* drain the request body */
    }
    const head = fr.method === 'HEAD';
    const auth = opts.auth;
    if (auth && fr.path === '/token') {
      if (auth.basic) {
        const want = `Basic ${Buffer.from(`${auth.basic.username}:${auth.basic.password}`).toString('base64')}`;
        if (req.headers.authorization !== want)
          return send(
            res,
            {
              ...registryError(401, 'UNAUTHORIZED', 'bad credentials'),
              headers: { 'Content-Type': 'application/json', 'WWW-Authenticate': 'Basic realm="fake"' },
            },
            head,
          );
      }
      return send(
        res,
        { status: 200, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ [auth.tokenField ?? 'token']: auth.token, expires_in: 300 }) },
        head,
      );
    }
    if (auth && fr.path.startsWith('/v2/') && req.headers.authorization !== `Bearer ${auth.token}`) {
      const repo = repoOf(fr.path);
      const scope = repo ? `,scope="repository:${repo}:pull"` : '';
      const challenge = `Bearer realm="${url}/token",service="${auth.service ?? 'fake'}"${scope}`;
      return send(
        res,
        { ...registryError(401, 'UNAUTHORIZED', 'authentication required'), headers: { 'Content-Type': 'application/json', 'WWW-Authenticate': challenge } },
        head,
      );
    }
    const route =
      opts.routes[`${fr.method} ${fr.path}`] ??
      (head ? opts.routes[`GET ${fr.path}`] : undefined) ??
      opts.routes[fr.path] ??
      (fr.path === '/v2/' ? { status: 200, body: '{}' } : undefined);
    const r =
      route === undefined
        ? opts.fallback
          ? await opts.fallback(fr)
          : registryError(404, 'NOT_FOUND', `no route for ${fr.method} ${fr.path}`)
        : typeof route === 'function'
          ? await route(fr)
          : route;
    return send(res, r, head);
  };
  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  const host = `127.0.0.1:${port}`;
  url = `http://${host}`;
  return {
    host,
    url,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
