import type { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { readCatalogSource } from '../catalog/source.js';
import { type KernelCatalogEntry, KernelCatalogFileSchema } from '../api/kernel-schemas.js';

export type { KernelCatalogEntry };

/** A catalog entry and where it comes from ("builtin" or a catalog file / URL). */
export interface CatalogEntry {
  entry: KernelCatalogEntry;
  origin: string;
}

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

function describeIssue(i: z.core.$ZodIssue, data: unknown): string {
  const path = i.path;
  // Name the entry by its name when there is one: "kernels[2] (my-kernel).source.sha256".
  let where = '';
  for (const [n, p] of path.entries()) {
    if (typeof p === 'number') {
      where += `[${p}]`;
      if (n === 1 && path[0] === 'kernels') {
        const name = (data as { kernels?: Array<{ name?: unknown }> })?.kernels?.[p]?.name;
        if (typeof name === 'string') where += ` (${name})`;
      }
    } else where += where ? `.${String(p)}` : String(p);
  }
  if (i.code === 'unrecognized_keys') return `${where ? `${where}: ` : ''}unknown field ${(i as { keys: string[] }).keys.map((k) => `"${k}"`).join(', ')}`;
  return `${where || '(top level)'}: ${i.message}`;
}

/** Parses a catalog file's text; errors name the file and the offending field. */
export function parseCatalog(text: string, origin: string): KernelCatalogEntry[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new BangerError('invalid_config', `kernel catalog ${origin}: invalid JSON: ${(e as Error).message}`, { fix: `fix the JSON in ${origin}` });
  }
  const res = KernelCatalogFileSchema.safeParse(raw);
  if (!res.success) {
    const issues = res.error.issues.map((i) => describeIssue(i, raw));
    throw new BangerError('invalid_config', `kernel catalog ${origin}: ${issues[0]}`, {
      fix: `fix ${origin} (format: docs/config.md, "Kernels"), or remove it from kernel_catalogs`,
      details: issues,
    });
  }
  const names = new Set<string>();
  for (const e of res.data.kernels) {
    if (names.has(e.name)) throw new BangerError('invalid_config', `kernel catalog ${origin}: the name "${e.name}" appears twice`, { fix: `rename or remove one in ${origin}` });
    names.add(e.name);
  }
  return res.data.kernels;
}

/** Reads one catalog: a file path (relative to `baseDir`) or an http(s) URL. */
export async function loadCatalog(ref: string, baseDir: string, signal?: AbortSignal): Promise<{ origin: string; entries: KernelCatalogEntry[] }> {
  const { origin, text } = await readCatalogSource(ref, baseDir, 'kernel_catalogs', signal);
  return { origin, entries: parseCatalog(text, origin) };
}

/** Built-ins first, then each catalog in order; a later entry replaces an earlier one of the same name. */
export function mergeCatalogs(builtin: KernelCatalogEntry[], catalogs: Array<{ origin: string; entries: KernelCatalogEntry[] }>): CatalogEntry[] {
  const merged = new Map<string, CatalogEntry>();
  for (const entry of builtin) merged.set(entry.name, { entry, origin: 'builtin' });
  for (const c of catalogs) for (const entry of c.entries) merged.set(entry.name, { entry, origin: c.origin });
  return [...merged.values()].sort((a, b) => a.entry.name.localeCompare(b.entry.name));
}

/** The full catalog: built-ins plus the configured catalog files. */
export async function loadKernelCatalog(refs: string[], baseDir: string, signal?: AbortSignal): Promise<CatalogEntry[]> {
  const catalogs = [];
  for (const ref of refs) catalogs.push(await loadCatalog(ref, baseDir, signal));
  return mergeCatalogs(BUILTIN_KERNELS, catalogs);
}
