import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { BUILTIN_IMAGES, loadImageCatalog, parseImageCatalog } from '../../src/images/catalog.js';

const oci = { name: 'app', kernel: 'debian-cloud', description: 'x', source: { kind: 'oci', ref: 'ghcr.io/org/app:v1' } };

const invalid = (f: () => unknown, ...patterns: RegExp[]) =>
  assert.throws(f, (e: unknown) => e instanceof BangerError && e.code === 'invalid_config' && patterns.every((p) => p.test(e.message)));

test('image catalogs are parsed like kernel catalogs: duplicates refused, the bad entry and field named', () => {
  assert.equal(parseImageCatalog(JSON.stringify({ images: [oci] }), '/c.json').length, 1);
  invalid(() => parseImageCatalog(JSON.stringify({ images: [oci, oci] }), '/c.json'), /\/c\.json/, /"app" appears twice/);
  invalid(() => parseImageCatalog(JSON.stringify({ images: [{ ...oci, source: { kind: 'rsync' } }] }), '/c.json'), /images\[0\] \(app\)\.source/);
  invalid(() => parseImageCatalog(JSON.stringify({ images: [{ ...oci, colour: 'red' }] }), '/c.json'), /unknown field "colour"/);
  invalid(() => parseImageCatalog('{ nope', '/c.json'), /invalid JSON/);
});

test('loadImageCatalog: built-ins, then configured catalogs replacing by name', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'banger-imgcat-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const builtin = BUILTIN_IMAGES[0] as (typeof BUILTIN_IMAGES)[number];
  await writeFile(join(dir, 'c.json'), JSON.stringify({ images: [oci, { ...oci, name: builtin.name, description: 'mine' }] }));
  const all = await loadImageCatalog(['c.json'], dir);
  assert.deepEqual(all.map((e) => e.name).sort(), ['app', ...BUILTIN_IMAGES.map((e) => e.name)].sort());
  assert.equal(all.find((e) => e.name === builtin.name)?.description, 'mine');
});
