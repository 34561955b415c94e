import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { ROOT } from '../helpers/banger.js';

/**
 * `import('banger')` loads the SDK and the client under it, nothing else of banger and no
 * dependency: a fresh node, run in the repository (the package resolves itself through its
 * "exports"), records every URL its loader resolves through a module.register hook.
 */
test("import('banger') resolves to dist/src/sdk and loads neither the daemon, the CLI, the archive code, zod nor any other package", async () => {
  const dir = await mkdtemp('/tmp/bg-sdk-import-');
  try {
    const log = join(dir, 'resolved.txt');
    const hook = join(dir, 'hook.mjs');
    await writeFile(
      hook,
      [
        "import { appendFileSync } from 'node:fs';",
        'let file;',
        'export function initialize(data) { file = data.file; }',
        'export async function resolve(specifier, context, next) {',
        '  const r = await next(specifier, context);',
        "  appendFileSync(file, r.url + '\\n');",
        '  return r;',
        '}',
      ].join('\n'),
    );
    const main = [
      "import { register } from 'node:module';",
      `register(${JSON.stringify(pathToFileURL(hook).href)}, { data: { file: ${JSON.stringify(log)} } });`,
      "const sdk = await import('banger');",
      "if (typeof sdk.Banger.connect !== 'function' || typeof sdk.BangerError !== 'function') throw new Error('exports missing');",
    ].join('\n');
    await promisify(execFile)(process.execPath, ['--input-type=module', '-e', main], { cwd: ROOT });
    const urls = (await readFile(log, 'utf8')).split('\n').filter(Boolean);
    const root = pathToFileURL(ROOT).href;
    assert.ok(urls.includes(`${root}/dist/src/sdk/index.js`), `banger resolved to its SDK entry: ${urls.join(', ')}`);
    assert.ok(
      urls.some((u) => u.startsWith(`${root}/dist/src/client/`)),
      'the client was loaded (the hook saw the whole graph)',
    );
    const forbidden = urls.filter((u) => /\/dist\/src\/(daemon|cli|archive|host|store|vmm|images|guest)\//.test(u) || u.includes('/node_modules/'));
    assert.deepEqual(forbidden, [], 'nothing of the daemon, the CLI, the archive code or any package (zod) is loaded');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
