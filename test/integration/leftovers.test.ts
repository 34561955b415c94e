import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { resolveLayout } from '../../src/config/layout.js';
import { probeDir, sweepLeftovers } from '../../src/daemon/services/leftovers.js';
import { processesNaming } from '../../src/host/orphans.js';

const noRows = { images: { byId: () => undefined }, kernels: { byId: () => undefined } } as unknown as Parameters<typeof sweepLeftovers>[1];

test('a KVM probe VMM left by a killed daemon is found by its directory and killed at the next start', async (t) => {
  const home = await mkdtemp('/tmp/bg-left-');
  t.after(() => rm(home, { recursive: true, force: true }));
  const layout = resolveLayout({ BANGER_HOME: home });
  const dir = join(probeDir(layout), 'banger-boot-probe-x');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'serial.log'), '');
  // Stands in for the probe's QEMU: a process that outlived its daemon, naming the probe dir in its argv.
  const orphan = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', join(dir, 'serial.log')], { detached: true, stdio: 'ignore' });
  t.after(() => orphan.kill('SIGKILL'));
  const exited = new Promise((r) => orphan.once('exit', r));
  // A bystander naming a path elsewhere is left alone.
  const bystander = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', join(home, 'elsewhere')], { detached: true, stdio: 'ignore' });
  t.after(() => bystander.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(
    (await processesNaming(probeDir(layout))).map((p) => p.pid),
    [orphan.pid],
  );

  const removed = await sweepLeftovers(layout, noRows);
  await exited;
  assert.ok(
    removed.some((r) => r.includes(`KVM probe process ${orphan.pid}`)),
    removed.join('\n'),
  );
  assert.equal(existsSync(probeDir(layout)), false);
  assert.equal(bystander.exitCode, null, 'a process naming another path is not touched');
});

test('image and kernel directories without a row are removed; those with one stay', async (t) => {
  const home = await mkdtemp('/tmp/bg-left-');
  t.after(() => rm(home, { recursive: true, force: true }));
  const layout = resolveLayout({ BANGER_HOME: home });
  for (const d of [join(layout.imagesDir, 'kept'), join(layout.imagesDir, 'orphan'), join(layout.kernelsDir, 'orphan-k')]) await mkdir(d, { recursive: true });
  const repos = { images: { byId: (id: string) => (id === 'kept' ? {} : undefined) }, kernels: { byId: () => undefined } } as unknown as Parameters<
    typeof sweepLeftovers
  >[1];
  const removed = await sweepLeftovers(layout, repos);
  assert.ok(existsSync(join(layout.imagesDir, 'kept')));
  assert.ok(!existsSync(join(layout.imagesDir, 'orphan')));
  assert.ok(!existsSync(join(layout.kernelsDir, 'orphan-k')));
  assert.equal(removed.length, 2);
});
