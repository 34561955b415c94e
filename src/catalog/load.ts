import { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { readCatalogSource } from './source.js';

/** What differs between the kernel and the image catalog; everything else is shared. */
export interface CatalogSpec<E extends { name: string }> {
  /** "kernel catalog" or "image catalog", for messages. */
  what: string;
  configKey: 'kernel_catalogs' | 'image_catalogs';
  /** The file's one top-level key: `{"kernels": [...]}` or `{"images": [...]}`. */
  listKey: string;
  entry: z.ZodType<E>;
  builtin: readonly E[];
  /** Where the format is documented, for the fix line. */
  formatDoc: string;
}

/** A catalog entry and where it comes from ("builtin" or a catalog file / URL). */
export interface Sourced<E> {
  entry: E;
  origin: string;
}

/** Names the offending field, and the entry by its name when it has one: "kernels[2] (my-kernel).source.sha256". */
function describeIssue(listKey: string, i: z.core.$ZodIssue, data: unknown): string {
  let where = '';
  for (const [n, p] of i.path.entries()) {
    if (typeof p === 'number') {
      where += `[${p}]`;
      if (n === 1 && i.path[0] === listKey) {
        const name = (data as Record<string, Array<{ name?: unknown }> | undefined>)?.[listKey]?.[p]?.name;
        if (typeof name === 'string') where += ` (${name})`;
      }
    } else where += where ? `.${String(p)}` : String(p);
  }
  if (i.code === 'unrecognized_keys') return `${where ? `${where}: ` : ''}unknown field ${(i as { keys: string[] }).keys.map((k) => `"${k}"`).join(', ')}`;
  return `${where || '(top level)'}: ${i.message}`;
}

/** Parses one catalog file's text; errors name the file, the entry and the offending field. */
export function parseCatalogText<E extends { name: string }>(spec: CatalogSpec<E>, text: string, origin: string): E[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new BangerError('invalid_config', `${spec.what} ${origin}: invalid JSON: ${(e as Error).message}`, { fix: `fix the JSON in ${origin}` });
  }
  const res = z
    .object({ [spec.listKey]: z.array(spec.entry) })
    .strict()
    .safeParse(raw);
  if (!res.success) {
    const issues = res.error.issues.map((i) => describeIssue(spec.listKey, i, raw));
    throw new BangerError('invalid_config', `${spec.what} ${origin}: ${issues[0]}`, {
      fix: `fix ${origin} (format: ${spec.formatDoc}), or remove it from ${spec.configKey}`,
      details: issues,
    });
  }
  const entries = (res.data as Record<string, E[]>)[spec.listKey] as E[];
  const names = new Set<string>();
  for (const e of entries) {
    if (names.has(e.name))
      throw new BangerError('invalid_config', `${spec.what} ${origin}: the name "${e.name}" appears twice`, { fix: `rename or remove one in ${origin}` });
    names.add(e.name);
  }
  return entries;
}

/** Reads one configured catalog: a file path (relative to `baseDir`), a file: URL, or an https URL. */
export async function loadCatalogFile<E extends { name: string }>(
  spec: CatalogSpec<E>,
  ref: string,
  baseDir: string,
  signal?: AbortSignal,
): Promise<{ origin: string; entries: E[] }> {
  const { origin, text } = await readCatalogSource(ref, baseDir, spec.configKey, signal);
  return { origin, entries: parseCatalogText(spec, text, origin) };
}

/** Built-ins first, then each catalog in order; a later entry replaces an earlier one of the same name. Sorted by name. */
export function mergeCatalogs<E extends { name: string }>(builtin: readonly E[], catalogs: Array<{ origin: string; entries: E[] }>): Array<Sourced<E>> {
  const merged = new Map<string, Sourced<E>>();
  for (const entry of builtin) merged.set(entry.name, { entry, origin: 'builtin' });
  for (const c of catalogs) for (const entry of c.entries) merged.set(entry.name, { entry, origin: c.origin });
  return [...merged.values()].sort((a, b) => a.entry.name.localeCompare(b.entry.name));
}

/** The whole catalog of one kind: its built-ins plus the configured catalogs. */
export async function loadCatalogs<E extends { name: string }>(
  spec: CatalogSpec<E>,
  refs: readonly string[],
  baseDir: string,
  signal?: AbortSignal,
): Promise<Array<Sourced<E>>> {
  const catalogs = [];
  for (const ref of refs) catalogs.push(await loadCatalogFile(spec, ref, baseDir, signal));
  return mergeCatalogs(spec.builtin, catalogs);
}
