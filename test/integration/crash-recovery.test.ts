import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import type { Image, Vm } from '../../src/api/schemas.js';
import { processesNaming } from '../../src/host/orphans.js';
import { TestHome } from '../helpers/banger.js';

// The FAKE Firecracker executable (test/helpers/fake-firecracker-bin.ts) stands in for the VMM: a
// real process that a crashed daemon must find and kill, with no guest to boot.
const FAKE_FC = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'fake-firecracker-bin.js');

/**
 * kill -9 of the daemon at named steps (BANGER_CRASH_AT, see src/util/crash-point.ts), then a
 * restart: nothing half-made survives. Checked on the host: processes, directories, store rows,
 * leases and TAPs.
 */
describe('a daemon killed mid-operation leaves nothing the next start does not clean up', () => {
  let home: TestHome;
  let scratch: string;

  const leftovers = async () => {
    const db = new Database(home.dbPath, { readonly: true });
    try {
      return {
        vmmProcesses: (await processesNaming(join(home.runDir, 'vms'))).map((p) => p.pid),
        vmRows: (db.prepare('SELECT name FROM vms').all() as Array<{ name: string }>).map((r) => r.name),
        leases: (db.prepare('SELECT count(*) AS n FROM ip_leases').get() as { n: number }).n,
        vmDirs: readdirSync(join(home.dir, 'state', 'vms')),
        vmRunDirs: readdirSync(join(home.runDir, 'vms')),
        imageDirs: readdirSync(join(home.dir, 'state', 'images')),
        staging: readdirSync(join(home.dir, 'state', 'staging')).filter((n) => n !== 'scratch'),
      };
    } finally {
      db.close();
    }
  };
  const clean = { vmmProcesses: [], vmRows: [], leases: 0, vmDirs: [], vmRunDirs: [], imageDirs: [], staging: [] };

  /** Runs a command with the crash point armed; the daemon it starts must die there. */
  const crashDuring = async (point: string, args: string[]) => {
    // A daemon already running would not see the variable: start a fresh one with it.
    await home.banger(['daemon', 'stop']);
    const r = await home.banger(args, 120_000, { BANGER_CRASH_AT: point, BANGER_AGENT_READY_TIMEOUT_MS: '60000' });
    assert.notEqual(r.code, 0, `the command cannot succeed when its daemon is killed at ${point}: ${r.stdout}${r.stderr}`);
    // The CLI may see the connection drop a moment before the kernel has reaped the daemon
    // (20 s only bound a hang; a failing case pays it, so it stays well under the file's timeout).
    for (let i = 0; i < 400 && home.daemonPids().length; i++) await sleep(50);
    assert.deepEqual(home.daemonPids(), [], `the daemon died at ${point}: ${r.stderr}`);
  };

  before(async () => {
    scratch = await mkdtemp('/tmp/bg-crash-');
    const fc = join(scratch, 'firecracker');
    await writeFile(fc, `#!/bin/sh\nexec '${process.execPath}' '${FAKE_FC}' "$@"\n`, { mode: 0o755 });
    home = await TestHome.create(`vmm = "firecracker"\nfirecracker_bin = "${fc}"\n`, { netns: true });
    await mkdir(join(scratch, 'kernel'));
    await writeFile(join(scratch, 'kernel', 'vmlinux'), 'not a kernel: the fake VMM boots nothing');
    await home.ok(['kernel', 'import', 'k', '--from', join(scratch, 'kernel')]);
    const rootfs = join(scratch, 'rootfs.ext4');
    execFileSync('truncate', ['-s', '32M', rootfs]);
    execFileSync('mkfs.ext4', ['-q', '-F', rootfs], { stdio: 'ignore' });
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', rootfs, '--kernel-ref', 'k']);
    // A bundle catalog entry, for a pull to crash in.
    execFileSync('sh', [
      '-c',
      `cd "$1" && printf '{"format":1,"rootfs":"rootfs.ext4","kernel":"k"}' > manifest.json && tar -cf - manifest.json rootfs.ext4 | zstd -q -1 -o bundle.tar.zst`,
      'sh',
      scratch,
    ]);
    const sha = execFileSync('sha256sum', [join(scratch, 'bundle.tar.zst')])
      .toString()
      .split(' ')[0];
    await writeFile(
      join(scratch, 'catalog.json'),
      JSON.stringify({
        images: [{ name: 'tiny', kernel: 'k', description: 'crash test', source: { kind: 'bundle', url: `file://${scratch}/bundle.tar.zst`, sha256: sha } }],
      }),
    );
    await writeFile(home.configFile, `vmm = "firecracker"\nfirecracker_bin = "${fc}"\nimage_catalogs = ["${scratch}/catalog.json"]\n`);
  });
  after(async () => {
    await home?.destroy();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  for (const point of ['vm-create:row', 'vm-create:lease', 'vm-create:disks', 'vm-start:launched']) {
    test(`vm create killed at ${point}: the restart removes the row, lease, files and VMM`, async () => {
      await crashDuring(point, ['vm', 'create', '--name', 'doomed', '--image', 'img', '--disk-size', '256M']);
      if (point === 'vm-start:launched') {
        assert.equal((await processesNaming(join(home.runDir, 'vms'))).length, 1, 'control: the fake VMM outlived the killed daemon');
      }
      const { vms } = await home.json<{ vms: Vm[] }>(['vm', 'list']);
      assert.deepEqual(vms, []);
      assert.deepEqual(await leftovers(), clean);
      // The name is free again and a create goes through.
      await home.ok(['vm', 'create', '--name', 'doomed', '--image', 'img', '--disk-size', '256M', '--no-start']);
      await home.ok(['vm', 'delete', 'doomed']);
      assert.deepEqual(await leftovers(), clean);
    });
  }

  test('a stopped VM whose start is killed after launch: the VMM is killed, the VM stays, stopped', async () => {
    await home.ok(['vm', 'create', '--name', 'kept', '--image', 'img', '--disk-size', '256M', '--no-start']);
    await crashDuring('vm-start:launched', ['vm', 'start', 'kept']);
    const vm = await home.json<Vm>(['vm', 'show', 'kept']);
    assert.equal(vm.state, 'stopped');
    assert.equal(vm.pid, null);
    assert.deepEqual((await leftovers()).vmmProcesses, []);
    await home.ok(['vm', 'delete', 'kept']);
    assert.deepEqual(await leftovers(), clean);
  });

  test('an image build killed after its VM launched: the build VM is deleted, never adopted', async () => {
    await writeFile(join(scratch, 'build.sh'), 'echo never runs\n');
    await crashDuring('vm-start:launched', ['image', 'build', '--from', 'img', '--script', join(scratch, 'build.sh'), '--name', 'built']);
    const { vms } = await home.json<{ vms: Vm[] }>(['vm', 'list']);
    assert.deepEqual(vms, []);
    assert.deepEqual(await leftovers(), clean);
    const { images } = await home.json<{ images: Image[] }>(['image', 'list']);
    assert.deepEqual(
      images.map((i) => i.name),
      ['img'],
    );
  });

  test('a kernel import killed between publishing its directory and its row: the directory is removed; a retry works', async () => {
    const kernelDirs = () => readdirSync(join(home.dir, 'state', 'kernels'));
    const before = kernelDirs();
    await crashDuring('kernel:published', ['kernel', 'import', 'k2', '--from', join(scratch, 'kernel')]);
    const { kernels } = await home.json<{ kernels: Array<{ name: string }> }>(['kernel', 'list']);
    assert.deepEqual(
      kernels.map((k) => k.name),
      ['k'],
    );
    assert.deepEqual(kernelDirs(), before, 'no kernel directory without its row');
    await home.ok(['kernel', 'import', 'k2', '--from', join(scratch, 'kernel')]);
    await home.ok(['kernel', 'rm', 'k2']);
    assert.deepEqual(kernelDirs(), before);
  });

  test('vm run whose guest never gets ready says which VM it kept, a generated name too (from the operation, not its log)', async () => {
    await home.banger(['daemon', 'stop']);
    const r = await home.banger(['vm', 'run', '--image', 'img', '--disk-size', '256M', '--', 'true'], 120_000, { BANGER_AGENT_READY_TIMEOUT_MS: '2000' });
    assert.equal(r.code, 1, r.stderr);
    const name = /^([a-z0-9-]+) was kept for inspection/m.exec(r.stderr)?.[1];
    assert.ok(name, r.stderr);
    const vm = await home.json<Vm>(['vm', 'show', name]);
    assert.equal(vm.state, 'error');
    await home.ok(['vm', 'delete', name]);
    await home.banger(['daemon', 'stop']);
    assert.deepEqual(await leftovers(), clean);
  });

  test('an image pull killed between publishing its directory and its row: the directory is removed; a retry works', async () => {
    await crashDuring('image:published', ['image', 'pull', 'tiny']);
    const { images } = await home.json<{ images: Image[] }>(['image', 'list']);
    assert.deepEqual(
      images.map((i) => i.name),
      ['img'],
    );
    assert.deepEqual(await leftovers(), clean);
    await home.ok(['image', 'pull', 'tiny']);
    const after = await home.json<{ images: Image[] }>(['image', 'list']);
    assert.deepEqual(after.images.map((i) => i.name).sort(), ['img', 'tiny']);
    await home.ok(['image', 'delete', 'tiny']);
  });
});
