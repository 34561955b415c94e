import { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { DIGEST } from './reference.js';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

export const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');

/** Manifests and configs are small JSON; anything bigger is refused before it is parsed. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024;

const LAYER_MEDIA: Record<string, 'gzip' | 'zstd' | 'none'> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
};

const Descriptor = z.object({
  mediaType: z.string().max(255),
  digest: z.string().regex(DIGEST, 'expected sha256:<64 hex digits>'),
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  urls: z.array(z.string()).optional(),
});
export type Descriptor = z.infer<typeof Descriptor>;

const Platform = z.object({ architecture: z.string(), os: z.string(), variant: z.string().optional() });

const IndexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(Descriptor.extend({ platform: Platform.optional() })).max(1000),
});

const ManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: Descriptor,
  layers: z.array(Descriptor).max(500),
});

const ConfigSchema = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  config: z
    .object({
      Env: z.array(z.string()).nullish(),
      Cmd: z.array(z.string()).nullish(),
      Entrypoint: z.array(z.string()).nullish(),
      WorkingDir: z.string().nullish(),
      User: z.string().nullish(),
    })
    .passthrough()
    .nullish(),
  rootfs: z.object({ type: z.string(), diff_ids: z.array(z.string().regex(DIGEST)) }),
});
export type ImageConfig = z.infer<typeof ConfigSchema>;

export type ParsedManifest =
  | { kind: 'index'; manifests: z.infer<typeof IndexSchema>['manifests'] }
  | { kind: 'manifest'; config: Descriptor; layers: Array<Descriptor & { compression: 'gzip' | 'zstd' | 'none' }> };

function rejected(what: string, why: string, fix?: string): BangerError {
  return new BangerError('rejected_content', `${what}: ${why}`, { fix: fix ?? 'the registry served something that is not a valid image; check the reference' });
}

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw rejected(what, 'not valid JSON');
  }
}

/** Parses a manifest or index; the media type comes from the body, else from the Content-Type. */
export function parseManifest(bytes: Uint8Array, contentType: string | undefined, what: string): ParsedManifest {
  if (bytes.length > MAX_MANIFEST_BYTES) throw rejected(what, `larger than ${MAX_MANIFEST_BYTES} bytes`);
  const json = parseJson(bytes, what) as { mediaType?: unknown; manifests?: unknown; schemaVersion?: unknown };
  const mediaType = typeof json.mediaType === 'string' ? json.mediaType : (contentType?.split(';')[0]?.trim() ?? '');
  if (json.schemaVersion === 1) throw rejected(what, 'schema 1 manifests are not supported', 'push the image with a current client (schema 2 / OCI)');
  const isIndex = mediaType === MEDIA.ociIndex || mediaType === MEDIA.dockerList || (!mediaType && Array.isArray(json.manifests));
  if (isIndex) {
    const r = IndexSchema.safeParse(json);
    if (!r.success) throw rejected(what, `not a valid image index (${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message})`);
    return { kind: 'index', manifests: r.data.manifests };
  }
  if (mediaType && mediaType !== MEDIA.ociManifest && mediaType !== MEDIA.dockerManifest) {
    throw rejected(what, `unsupported media type ${mediaType}`, 'only OCI and Docker schema 2 images can be pulled');
  }
  const r = ManifestSchema.safeParse(json);
  if (!r.success) throw rejected(what, `not a valid image manifest (${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message})`);
  const layers = r.data.layers.map((l) => {
    const compression = LAYER_MEDIA[l.mediaType];
    if (!compression)
      throw rejected(what, `layer ${l.digest} has unsupported media type ${l.mediaType}`, 'banger unpacks tar layers that are uncompressed, gzip or zstd');
    return { ...l, compression };
  });
  return { kind: 'manifest', config: r.data.config, layers };
}

export function parseConfig(bytes: Uint8Array, what: string): ImageConfig {
  if (bytes.length > MAX_CONFIG_BYTES) throw rejected(what, `larger than ${MAX_CONFIG_BYTES} bytes`);
  const r = ConfigSchema.safeParse(parseJson(bytes, what));
  if (!r.success) throw rejected(what, `not a valid image config (${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message})`);
  return r.data;
}

export interface WantedPlatform {
  os: string;
  architecture: string;
}

/** Picks the entry of an index for the platform; a clear error lists what the index does offer. */
export function selectPlatform(manifests: z.infer<typeof IndexSchema>['manifests'], want: WantedPlatform, what: string): Descriptor {
  const candidates = manifests.filter((m) => m.platform?.os === want.os && m.platform?.architecture === want.architecture);
  // amd64 has no variants in practice; prefer an entry without one, then v1.
  const pick = candidates.find((m) => !m.platform?.variant) ?? candidates.find((m) => m.platform?.variant === 'v1') ?? candidates[0];
  if (!pick) {
    const offered = manifests
      .map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}${m.platform.variant ? `/${m.platform.variant}` : ''}` : 'unknown'))
      .filter((p) => p !== 'unknown/unknown');
    throw new BangerError('rejected_content', `${what} has no ${want.os}/${want.architecture} image (it offers: ${offered.join(', ') || 'nothing usable'})`, {
      fix: `pick a reference built for ${want.os}/${want.architecture}`,
    });
  }
  return pick;
}
