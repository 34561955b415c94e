import { readFile } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { BangerError } from '../api/errors.js';
import { displayUrl, readUrl } from '../archive/download.js';

const MAX_CATALOG_BYTES = 1024 * 1024;

/**
 * The text of one catalog named in the config (`kernel_catalogs`, `image_catalogs`): an http(s)
 * URL, or a file path relative to the config file's directory. `origin` names it in messages.
 */
export async function readCatalogSource(ref: string, baseDir: string, configKey: string, signal?: AbortSignal): Promise<{ origin: string; text: string }> {
  const what = configKey === 'kernel_catalogs' ? 'kernel catalog' : 'image catalog';
  if (/^https?:\/\//i.test(ref)) {
    const origin = displayUrl(ref);
    const bytes = await readUrl(
      ref,
      MAX_CATALOG_BYTES,
      () => new BangerError('invalid_config', `${what} ${origin} is larger than ${MAX_CATALOG_BYTES} bytes`, { fix: `check the URL in ${configKey}` }),
      signal,
    );
    return { origin, text: bytes.toString('utf8') };
  }
  const path = isAbsolute(ref) ? ref : resolve(baseDir, ref);
  try {
    return { origin: path, text: await readFile(path, 'utf8') };
  } catch (e) {
    throw new BangerError('invalid_config', `${what} ${path}: cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      fix: `fix the path in ${configKey} (relative paths are relative to the config file)`,
    });
  }
}
