import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { ROOT } from '../helpers/banger.js';

// scripts/check-imports.mjs run on small src/ trees written here, and on the real one.
const SCRIPT = join(ROOT, 'scripts', 'check-imports.mjs');

async function tree(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'banger-imports-'));
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), text);
  }
  return dir;
}

function run(srcDir: string): { code: number | null; out: string } {
  const r = spawnSync(process.execPath, [SCRIPT, srcDir], { encoding: 'utf8', cwd: ROOT });
  return { code: r.status, out: r.stdout + r.stderr };
}

// The tree both cases start from: every edge points down, and every named exception is used.
const BASE: Record<string, string> = {
  'api/errors.ts': 'export class BangerError extends Error {}\n',
  'util/ids.ts': "import { BangerError } from '../api/errors.js';\nexport const id = () => new BangerError('x');\n",
  'host/ssh-config.ts': 'export const hasInclude = () => true;\n',
  'host/cpu.ts': 'export const khz = 1;\n',
  'store/db.ts': "import { id } from '../util/ids.js';\nexport const db = id;\n",
  'vmm/driver.ts': "import { khz } from '../host/cpu.js';\nexport const k = khz;\n",
  'doctor/checks.ts': "import { db } from '../store/db.js';\nexport const c = db;\n",
  'config/layout.ts': 'export const layout = 1;\n',
  'client/client.ts':
    "import type { BangerError } from '../api/errors.js';\nimport { layout } from '../config/layout.js';\nexport type E = BangerError;\nexport const l = layout;\n",
  'cli/commands/misc.ts': "export async function doctor() {\n  const { c } = await import('../../doctor/checks.js');\n  return c;\n}\n",
  'cli/commands/ssh.ts':
    "import { hasInclude } from '../../host/ssh-config.js';\nimport { l } from '../../client/client.js';\nexport const x = [hasInclude, l];\n",
  'system/control.ts': "import { db } from '../store/db.js';\nexport const s = db;\n",
  'cli/commands/system.ts': "import { s } from '../../system/control.js';\nexport const y = s;\n",
  'archive/safe-extract.ts': "import { khz } from '../host/cpu.js';\nexport const safeExtract = khz;\n",
  'cli/cp-host.ts': "import { safeExtract } from '../archive/safe-extract.js';\nexport const cp = safeExtract;\n",
  'sdk/dirs.ts': "export async function download() {\n  const { safeExtract } = await import('../archive/safe-extract.js');\n  return safeExtract;\n}\n",
  'daemon/main.ts': "import { k } from '../vmm/driver.js';\nimport { c } from '../doctor/checks.js';\nexport const m = [k, c];\n",
};

test('a tree whose imports all point down passes, and the real src/ does', async (t) => {
  const dir = await tree(BASE);
  t.after(() => rm(dir, { recursive: true, force: true }));
  const good = run(dir);
  assert.equal(good.code, 0, good.out);
  const real = run(join(ROOT, 'src'));
  assert.equal(real.code, 0, real.out);
});

test('upward, sideways and layer-skipping imports fail with each edge named; comments and strings are not imports', async (t) => {
  const dir = await tree({
    ...BASE,
    // upward, as a type-only import (oci/blob-cache.ts → daemon/locks.ts was such an edge)
    'host/cpu.ts': "import type { m } from '../daemon/main.js';\nexport const khz = 1;\nexport type M = typeof m;\n",
    // sideways, as a re-export (store/leases.ts → host/netplan.ts was such an edge)
    'store/db.ts': "export { khz as db } from '../host/cpu.js';\n",
    // the client reaching into the daemon's layers, through a dynamic import
    'client/client.ts': "export const l = 1;\nexport const v = () => import('../vmm/driver.js');\n",
    // text that only looks like imports
    'util/ids.ts':
      "// import { x } from '../daemon/main.js';\n/* import '../cli/commands/ssh.js'; */\nexport const id = \"import { y } from '../daemon/main.js'\";\n",
    // a module no layer names
    'web/server.ts': 'export const s = 1;\n',
  });
  t.after(() => rm(dir, { recursive: true, force: true }));
  const r = run(dir);
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /^host\/cpu\.ts -> daemon\/main\.ts: upward/m);
  assert.match(r.out, /^store\/db\.ts -> host\/cpu\.ts: sideways/m);
  assert.match(r.out, /^client\/client\.ts -> vmm\/driver\.ts: client may import only/m);
  assert.match(r.out, /^web\/server\.ts: module web\/ is in no layer/m);
  assert.doesNotMatch(r.out, /^util\/ids\.ts/m, 'a comment or a string is no import');
});

test('an exception no edge uses is reported, so the list stays true', async (t) => {
  const dir = await tree({ ...BASE, 'cli/commands/ssh.ts': "import { l } from '../../client/client.js';\nexport const x = l;\n" });
  t.after(() => rm(dir, { recursive: true, force: true }));
  const r = run(dir);
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /exception cli\/commands\/ssh\.ts -> host\/ssh-config\.ts is no longer used/);
});
