import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BangerError } from '../api/errors.js';
import { displayUrl, insecureUrlProblem, readUrl } from '../archive/download.js';

const MAX_CATALOG_BYTES = 1024 * 1024;

/**
 * The text of one catalog named in the config (`kernel_catalogs`, `image_catalogs`): an https URL
 * (or http to loopback), a file: URL, or a file path relative to the config file's directory.
 * `origin` names it in messages. A catalog decides what gets downloaded and booted, so it is
 * never read over plain http across a network, nor through a redirect to one.
 */
export async function readCatalogSource(ref: string, baseDir: string, configKey: string, signal?: AbortSignal): Promise<{ origin: string; text: string }> {
  const what = configKey === 'kernel_catalogs' ? 'kernel catalog' : 'image catalog';
  const checkUrl = (url: string) => {
    const problem = insecureUrlProblem(url);
    if (problem) {
      throw new BangerError(
        'invalid_config',
        `${what} ${displayUrl(url)}${url === ref ? '' : ` (a redirect from ${displayUrl(ref)})`} ${problem}: anyone on the network path could rewrite it`,
        {
          fix: `serve the catalog over https (or from a file) and update ${configKey}; http is accepted only from 127.0.0.1, ::1 or localhost`,
        },
      );
    }
  };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref) && !/^file:/i.test(ref)) {
    checkUrl(ref);
    const origin = displayUrl(ref);
    const bytes = await readUrl(
      ref,
      MAX_CATALOG_BYTES,
      () => new BangerError('invalid_config', `${what} ${origin} is larger than ${MAX_CATALOG_BYTES} bytes`, { fix: `check the URL in ${configKey}` }),
      signal,
      { checkUrl },
    );
    return { origin, text: bytes.toString('utf8') };
  }
  let path: string;
  try {
    path = /^file:/i.test(ref) ? fileURLToPath(ref) : isAbsolute(ref) ? ref : resolve(baseDir, ref);
  } catch (e) {
    throw new BangerError('invalid_config', `${what} ${ref}: ${(e as Error).message}`, { fix: `use file:///absolute/path or a plain path in ${configKey}` });
  }
  const size = await stat(path).then(
    (st) => st.size,
    () => 0,
  );
  if (size > MAX_CATALOG_BYTES) {
    throw new BangerError('invalid_config', `${what} ${path} is larger than ${MAX_CATALOG_BYTES} bytes`, { fix: `check the path in ${configKey}` });
  }
  try {
    return { origin: path, text: await readFile(path, 'utf8') };
  } catch (e) {
    throw new BangerError('invalid_config', `${what} ${path}: cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      fix: `fix the path in ${configKey} (relative paths are relative to the config file)`,
    });
  }
}
