import assert from 'node:assert/strict';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { assertRootCode, assertRootOwnedTree } from '../../src/host/root-code.js';

const skip = process.getuid?.() === 0 ? false : 'needs root: the trees under test are root-owned and chowned to another uid';
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A root-owned install tree like banger's: bin/, dist/, node_modules/ with a link, native/build/. */
function tree(): string {
  const root = mkdtempSync(join(tmpdir(), 'root-code-'));
  dirs.push(root);
  chmodSync(root, 0o755);
  for (const d of ['bin', 'dist/src/helper', 'node_modules/zod', 'node_modules/.bin', 'native/build'])
    mkdirSync(join(root, d), { recursive: true, mode: 0o755 });
  writeFileSync(join(root, 'bin', 'bangerd-root.js'), 'import "../dist/src/helper/main.js";\n', { mode: 0o755 });
  writeFileSync(join(root, 'dist/src/helper/main.js'), '', { mode: 0o644 });
  writeFileSync(join(root, 'node_modules/zod/index.js'), '', { mode: 0o644 });
  symlinkSync('../zod/index.js', join(root, 'node_modules/.bin/zod'));
  writeFileSync(join(root, 'native/build/banger-peercred'), '', { mode: 0o755 });
  writeFileSync(join(root, 'package.json'), '{}', { mode: 0o644 });
  return root;
}

const refused = (re: RegExp) => (e: unknown) => e instanceof BangerError && e.code === 'precondition_failed' && re.test(e.message) && /root/.test(e.fix ?? '');

test('a root-owned tree (with root-made links) and node pass', { skip }, () => {
  assertRootCode(tree(), process.execPath, 'test');
});

test('a file or directory another uid owns, or one writable by group/others, anywhere in the tree is refused', { skip }, () => {
  let root = tree();
  chownSync(join(root, 'node_modules/zod/index.js'), 65534, 65534);
  assert.throws(() => assertRootCode(root, process.execPath, 'test'), refused(/zod\/index\.js is owned by uid 65534/));

  root = tree();
  chownSync(join(root, 'native/build'), 65534, 65534);
  assert.throws(() => assertRootCode(root, process.execPath, 'test'), refused(/native\/build is owned by uid 65534/));

  root = tree();
  chmodSync(join(root, 'dist/src/helper/main.js'), 0o664);
  assert.throws(() => assertRootCode(root, process.execPath, 'test'), refused(/main\.js is writable by group or others/));
});

test('an ancestor someone else could rename is refused; a sticky world-writable one (/tmp) is not', { skip }, () => {
  const outer = mkdtempSync(join(tmpdir(), 'root-code-outer-'));
  dirs.push(outer);
  const mid = join(outer, 'owners');
  mkdirSync(mid, { mode: 0o755 });
  chownSync(mid, 65534, 65534);
  const inner = join(mid, 'banger');
  mkdirSync(join(inner, 'dist'), { recursive: true, mode: 0o755 });
  assert.throws(() => assertRootOwnedTree(join(inner, 'dist'), 'test'), refused(/owner uid 65534.*someone other than root can change/));
  chownSync(mid, 0, 0);
  chmodSync(mid, 0o777);
  assert.throws(() => assertRootOwnedTree(join(inner, 'dist'), 'test'), refused(/mode 0777/));
  chmodSync(mid, 0o1777);
  assertRootOwnedTree(join(inner, 'dist'), 'test');
});

test('a node binary another uid could replace is refused', { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'root-code-node-'));
  dirs.push(dir);
  const node = join(dir, 'node');
  writeFileSync(node, '', { mode: 0o755 });
  chownSync(node, 65534, 65534);
  assert.throws(() => assertRootCode(tree(), node, 'test'), refused(/node .*must be root's/));
});
