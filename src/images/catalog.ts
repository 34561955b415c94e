import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { ResourceName } from '../api/schemas.js';
import { type CatalogSpec, loadCatalogs, parseCatalogText } from '../catalog/load.js';
import { DEFAULT_IMAGE_NAME } from '../config/config.js';
import { DEFAULT_KERNEL_NAME } from '../kernels/catalog.js';
import { AGENTS_IMAGE_NAME } from '../util/coding-agents.js';
import { plainRelativePath } from './npm-layer.js';

/** A path relative to the catalog's own directory (the package's images/ for built-in entries). */
const CatalogRelativePath = z.string().refine((p) => plainRelativePath(p), { message: 'expected a relative path of plain names (no "..", no leading "/")' });

/**
 * npm packages installed into the image on the host, from a pinned lock (src/images/npm-layer.ts,
 * docs/config.md "npm packages in recipes"). Only built-in entries and local catalog files may use
 * it, and `overlay`: they read files next to the catalog.
 */
const NpmSource = z
  .object({
    /** Directory with package.json and package-lock.json. */
    dir: CatalogRelativePath,
    prefix: z
      .string()
      .regex(/^\/opt(?:\/[a-z0-9][a-z0-9._-]*){1,4}$/, 'expected a directory under /opt, e.g. /opt/banger/agents')
      .default('/opt/banger/agents'),
    bins: z
      .array(z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'expected a command name'))
      .max(64)
      .default([]),
    links: z
      .array(
        z
          .object({
            file: z.string().refine((p) => p.startsWith('node_modules/') && plainRelativePath(p), { message: 'expected a path under node_modules/' }),
            target: z.string().refine((p) => p.startsWith('node_modules/') && plainRelativePath(p), { message: 'expected a path under node_modules/' }),
          })
          .strict(),
      )
      .max(32)
      .default([]),
  })
  .strict();

const RecipeSource = z
  .object({
    kind: z.literal('recipe'),
    builder: z.literal('mmdebstrap'),
    suite: z.string().regex(/^[a-z][a-z0-9-]*$/),
    variant: z.enum(['minbase', 'required', 'important', 'standard', 'apt']).default('minbase'),
    packages: z.array(z.string().regex(/^[a-z0-9][a-z0-9+.-]*$/, 'expected Debian package names')).default([]),
    mirror: z.string().url().optional(),
    npm: NpmSource.optional(),
    /** A directory whose tree is copied over the image's / (owner root, modes kept). */
    overlay: CatalogRelativePath.optional(),
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
export type NpmSourceSpec = z.infer<typeof NpmSource>;

/** Where built-in entries' files live: the package's images/ directory. */
export const BUILTIN_ASSETS_DIR = fileURLToPath(new URL('../../../images/', import.meta.url));

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
  {
    name: AGENTS_IMAGE_NAME,
    description:
      'debian-bookworm plus Node.js LTS, npm and the coding agents Claude Code, opencode, pi and Codex (pinned; versions in image show), tmux sessions that survive restarts',
    kernel: DEFAULT_KERNEL_NAME,
    source: {
      kind: 'recipe',
      builder: 'mmdebstrap',
      suite: 'bookworm',
      variant: 'minbase',
      packages: DEV_PACKAGES,
      npm: {
        dir: 'agents',
        prefix: '/opt/banger/agents',
        bins: ['node', 'npm', 'npx', 'claude', 'opencode', 'pi', 'codex'],
        // What the packages' postinstall scripts would do (they never run): the placeholder
        // `bin` becomes the platform package's binary. Codex finds its platform package itself.
        links: [
          { file: 'node_modules/@anthropic-ai/claude-code/bin/claude.exe', target: 'node_modules/@anthropic-ai/claude-code-linux-x64/claude' },
          { file: 'node_modules/opencode-ai/bin/opencode.exe', target: 'node_modules/opencode-linux-x64/bin/opencode' },
        ],
      },
      overlay: 'agents/overlay',
    },
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
  return (await loadImageCatalogSourced(refs, baseDir, signal)).map((s) => s.entry);
}

/** The same, each entry with where it came from ('builtin', a catalog file's path, or a URL). */
export function loadImageCatalogSourced(refs: string[], baseDir: string, signal?: AbortSignal) {
  return loadCatalogs(IMAGE_CATALOG, refs, baseDir, signal);
}

/**
 * The directory a recipe's `npm.dir` and `overlay` are relative to: the package's images/ for a
 * built-in entry, the catalog file's directory for a local catalog. A catalog from a URL cannot
 * name host files (it could otherwise copy any host directory into an image).
 */
export function recipeFilesBase(origin: string, entryName: string): string {
  if (origin === 'builtin') return BUILTIN_ASSETS_DIR;
  if (origin.startsWith('/')) return dirname(origin);
  throw new BangerError('invalid_config', `image ${entryName} from ${origin} names local files (npm or overlay), which only local catalog files may do`, {
    fix: 'copy the catalog and the files it names to a local directory and list the file in image_catalogs',
  });
}
