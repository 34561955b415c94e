import { type KernelCatalogEntry, KernelCatalogEntrySchema } from '../api/kernel-schemas.js';
import { type CatalogSpec, loadCatalogFile, loadCatalogs, mergeCatalogs, parseCatalogText, type Sourced } from '../catalog/load.js';

export type { KernelCatalogEntry };

/** A catalog entry and where it comes from ("builtin" or a catalog file / URL). */
export type CatalogEntry = Sourced<KernelCatalogEntry>;

/** The built-in kernel an image is pulled with when neither its catalog entry nor `--kernel-ref` names one. */
export const DEFAULT_KERNEL_NAME = 'debian-cloud';

/** The kernels banger knows without any configuration. */
export const BUILTIN_KERNELS: KernelCatalogEntry[] = [
  {
    name: DEFAULT_KERNEL_NAME,
    distro: 'debian-12',
    arch: 'x86_64',
    version: 'latest',
    description:
      'Debian 12 (bookworm) cloud kernel (linux-image-cloud-amd64, resolved through the Debian package index at pull time). Boots under QEMU; the uncompressed vmlinux Firecracker needs is extracted from it.',
    size: 27 * 1024 * 1024,
    source: { kind: 'debian-index', suite: 'bookworm', component: 'main', package: 'linux-image-cloud-amd64' },
  },
];

const KERNEL_CATALOG: CatalogSpec<KernelCatalogEntry> = {
  what: 'kernel catalog',
  configKey: 'kernel_catalogs',
  listKey: 'kernels',
  entry: KernelCatalogEntrySchema,
  builtin: BUILTIN_KERNELS,
  formatDoc: 'docs/config.md, "Kernels"',
};

/** Parses a catalog file's text; errors name the file and the offending field. */
export function parseCatalog(text: string, origin: string): KernelCatalogEntry[] {
  return parseCatalogText(KERNEL_CATALOG, text, origin);
}

/** Reads one catalog: a file path (relative to `baseDir`) or an https URL. */
export function loadCatalog(ref: string, baseDir: string, signal?: AbortSignal): Promise<{ origin: string; entries: KernelCatalogEntry[] }> {
  return loadCatalogFile(KERNEL_CATALOG, ref, baseDir, signal);
}

export { mergeCatalogs };

/** The full catalog: built-ins plus the configured catalog files. */
export function loadKernelCatalog(refs: string[], baseDir: string, signal?: AbortSignal): Promise<CatalogEntry[]> {
  return loadCatalogs(KERNEL_CATALOG, refs, baseDir, signal);
}
