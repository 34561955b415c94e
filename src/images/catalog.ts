import { z } from 'zod';
import { ResourceName } from '../api/schemas.js';
import { type CatalogSpec, loadCatalogs, parseCatalogText } from '../catalog/load.js';
import { DEFAULT_IMAGE_NAME } from '../config/config.js';
import { DEFAULT_KERNEL_NAME } from '../kernels/catalog.js';

const RecipeSource = z
  .object({
    kind: z.literal('recipe'),
    builder: z.literal('mmdebstrap'),
    suite: z.string().regex(/^[a-z][a-z0-9-]*$/),
    variant: z.enum(['minbase', 'required', 'important', 'standard', 'apt']).default('minbase'),
    packages: z.array(z.string().regex(/^[a-z0-9][a-z0-9+.-]*$/, 'expected Debian package names')).default([]),
    mirror: z.string().url().optional(),
  })
  .strict();

const BundleSource = z
  .object({
    kind: z.literal('bundle'),
    /** http(s) URL, file:// URL or absolute path of a .tar.zst holding rootfs.ext4 and manifest.json. */
    url: z.string().min(1),
    sha256: z.string().regex(/^[a-f0-9]{64}$/, 'expected 64 lowercase hex digits'),
  })
  .strict();

const OciSource = z.object({ kind: z.literal('oci'), ref: z.string().min(1) }).strict();

export const ImageCatalogEntrySchema = z
  .object({
    name: ResourceName,
    description: z.string().default(''),
    /** Kernel catalog name (or installed kernel) the image boots with. */
    kernel: z.string().min(1),
    source: z.discriminatedUnion('kind', [RecipeSource, BundleSource, OciSource]),
  })
  .strict();
export type ImageCatalogEntry = z.infer<typeof ImageCatalogEntrySchema>;
export type RecipeSpec = z.infer<typeof RecipeSource>;

/** What `manifest.json` in a bundle says. */
export const BundleManifestSchema = z
  .object({
    format: z.literal(1),
    rootfs: z.literal('rootfs.ext4'),
    kernel: z.string().min(1).optional(),
    description: z.string().optional(),
  })
  .passthrough();

/** Packages of the default development image, on top of Debian's minbase. */
export const DEV_PACKAGES = [
  'systemd-sysv',
  'udev',
  'dbus',
  'openssh-server',
  'sudo',
  'ca-certificates',
  'curl',
  'git',
  'jq',
  'tmux',
  'less',
  'procps',
  'iproute2',
  'iputils-ping',
  'netbase',
  'kmod',
  'build-essential',
  'python3',
];

export const BUILTIN_IMAGES: ImageCatalogEntry[] = [
  {
    name: DEFAULT_IMAGE_NAME,
    description: 'Debian 12 development image: systemd, sshd, git, curl, jq, tmux, build-essential, python3 (built from Debian’s mirror with mmdebstrap)',
    kernel: DEFAULT_KERNEL_NAME,
    source: { kind: 'recipe', builder: 'mmdebstrap', suite: 'bookworm', variant: 'minbase', packages: DEV_PACKAGES },
  },
];

const IMAGE_CATALOG: CatalogSpec<ImageCatalogEntry> = {
  what: 'image catalog',
  configKey: 'image_catalogs',
  listKey: 'images',
  entry: ImageCatalogEntrySchema,
  builtin: BUILTIN_IMAGES,
  formatDoc: 'docs/config.md, image catalog format',
};

/** Parses an image catalog file's text; errors name the file, the entry and the offending field. */
export function parseImageCatalog(text: string, origin: string): ImageCatalogEntry[] {
  return parseCatalogText(IMAGE_CATALOG, text, origin);
}

/** Built-in entries, then each configured catalog in order; a later entry replaces an earlier one of the same name. */
export async function loadImageCatalog(refs: string[], baseDir: string, signal?: AbortSignal): Promise<ImageCatalogEntry[]> {
  return (await loadCatalogs(IMAGE_CATALOG, refs, baseDir, signal)).map((s) => s.entry);
}
