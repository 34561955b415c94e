import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { BOOT_MODULES, modinfoField, moduleDepends, resolveModules } from '../../src/guest/kernel-modules.js';
import { ProcessRunner } from '../../src/host/runner.js';

/**
 * A FAKE kernel module tree: the .ko files are junk bytes with a modinfo-like string table, which
 * is all the resolver reads. Layout and names follow Debian's cloud kernel.
 */
const VERSION = '6.1.0-99-fake-amd64';
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const fakeKo = (name: string, depends: string[], vermagic = VERSION): Buffer =>
  Buffer.concat([
    Buffer.from('\x7fNOT-AN-ELF junk\0'),
    Buffer.from(`license=GPL\0depends=${depends.join(',')}\0retpoline=Y\0name=${name}\0vermagic=${vermagic} SMP mod_unload modversions \0`),
  ]);

const DEBIAN_LIKE: Record<string, [string, string[]]> = {
  virtio_ring: ['kernel/drivers/virtio/virtio_ring.ko', []],
  virtio: ['kernel/drivers/virtio/virtio.ko', ['virtio_ring']],
  virtio_mmio: ['kernel/drivers/virtio/virtio_mmio.ko', ['virtio', 'virtio_ring']],
  virtio_blk: ['kernel/drivers/block/virtio_blk.ko', ['virtio', 'virtio_ring']],
  failover: ['kernel/net/core/failover.ko', []],
  net_failover: ['kernel/drivers/net/net_failover.ko', ['failover']],
  // Listed before its dependency net_failover in the file: order must come from the graph.
  virtio_net: ['kernel/drivers/net/virtio_net.ko', ['virtio_ring', 'virtio', 'net_failover']],
  virtio_console: ['kernel/drivers/char/virtio_console.ko', ['virtio', 'virtio_ring']],
  vsock: ['kernel/net/vmw_vsock/vsock.ko', []],
  vmw_vsock_virtio_transport_common: ['kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko', ['vsock']],
  vmw_vsock_virtio_transport: ['kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko', ['virtio', 'vmw_vsock_virtio_transport_common', 'virtio_ring', 'vsock']],
  // Unrelated modules are ignored.
  ext4_helper: ['kernel/fs/ext4-helper.ko', ['virtio']],
};

async function fakeTree(mods: Record<string, [string, string[]] | [string, string[], Buffer]>, builtin?: string[]): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'fake-kmods-'));
  dirs.push(root);
  const modulesDir = join(root, 'lib/modules', VERSION);
  await mkdir(modulesDir, { recursive: true });
  for (const [name, [rel, deps, data]] of Object.entries(mods)) {
    await mkdir(dirname(join(modulesDir, rel)), { recursive: true });
    await writeFile(join(modulesDir, rel), data ?? fakeKo(name, deps));
  }
  if (builtin) await writeFile(join(modulesDir, 'modules.builtin'), builtin.map((b) => `${b}\n`).join(''));
  return modulesDir;
}

test('dependencies come first; otherwise the requested order is kept', async () => {
  const modulesDir = await fakeTree(DEBIAN_LIKE, ['kernel/fs/ext4/ext4.ko']);
  const r = await resolveModules({ modulesDir, version: VERSION });
  assert.deepEqual(
    r.modules.map((m) => m.name),
    [...BOOT_MODULES, 'vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport'],
  );
  const vnet = r.modules.find((m) => m.name === 'virtio_net');
  assert.equal(vnet?.relPath, 'kernel/drivers/net/virtio_net.ko');
  assert.deepEqual(vnet?.depends, ['virtio_ring', 'virtio', 'net_failover']);
  for (const [i, m] of r.modules.entries()) {
    for (const d of m.depends) assert.ok(r.modules.findIndex((x) => x.name === d) < i, `${d} before ${m.name}`);
  }
  assert.deepEqual(r.builtin, []);
  assert.deepEqual(r.missingOptional, []);
});

test('built-in modules (modules.builtin) are skipped, also as dependencies', async () => {
  const { virtio_ring: _r, virtio: _v, ...rest } = DEBIAN_LIKE;
  const modulesDir = await fakeTree(rest, ['kernel/drivers/virtio/virtio.ko', 'kernel/drivers/virtio/virtio_ring.ko']);
  const r = await resolveModules({ modulesDir, version: VERSION, optional: [] });
  assert.deepEqual(r.builtin, ['virtio_ring', 'virtio']);
  assert.equal(r.modules[0]?.name, 'virtio_mmio');
});

test('a required module that is neither a file nor built in is an error; a missing optional one is not', async () => {
  const { virtio_console: _c, vsock: _v, vmw_vsock_virtio_transport_common: _t, vmw_vsock_virtio_transport: _u, ...rest } = DEBIAN_LIKE;
  const modulesDir = await fakeTree(rest, []);
  await assert.rejects(resolveModules({ modulesDir, version: VERSION }), /virtio_console is neither in .* nor built into kernel/);
  const r = await resolveModules({ modulesDir, version: VERSION, required: ['virtio_blk'] });
  assert.deepEqual(r.missingOptional, ['vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport']);
  const dep = await fakeTree({ virtio_blk: DEBIAN_LIKE.virtio_blk as [string, string[]] }, []);
  await assert.rejects(resolveModules({ modulesDir: dep, version: VERSION, required: ['virtio_blk'] }), /virtio \(needed by virtio_blk\)/);
});

test('without modules.builtin, a missing required module is assumed built in', async () => {
  const modulesDir = await fakeTree({ virtio_blk: ['kernel/drivers/block/virtio_blk.ko', ['virtio']] });
  const r = await resolveModules({ modulesDir, version: VERSION, required: ['virtio_blk'], optional: [] });
  assert.deepEqual(r.assumedBuiltin, ['virtio']);
  assert.deepEqual(
    r.modules.map((m) => m.name),
    ['virtio_blk'],
  );
});

test('file names with dashes match dependency names with underscores', async () => {
  const modulesDir = await fakeTree(
    {
      'a-b': ['kernel/a-b.ko', []],
      top: ['kernel/top.ko', ['a_b']],
    },
    [],
  );
  const r = await resolveModules({ modulesDir, version: VERSION, required: ['top'], optional: [] });
  assert.deepEqual(
    r.modules.map((m) => [m.name, m.relPath]),
    [
      ['a_b', 'kernel/a-b.ko'],
      ['top', 'kernel/top.ko'],
    ],
  );
});

test('a dependency cycle and a module of another kernel are reported', async () => {
  const cyc = await fakeTree({ a: ['kernel/a.ko', ['b']], b: ['kernel/b.ko', ['a']] }, []);
  await assert.rejects(resolveModules({ modulesDir: cyc, version: VERSION, required: ['a'], optional: [] }), /cycle: a → b → a/);
  const other = await fakeTree({ a: ['kernel/a.ko', [], fakeKo('a', [], '5.10.0-1-amd64')] }, []);
  await assert.rejects(resolveModules({ modulesDir: other, version: VERSION, required: ['a'], optional: [] }), /built for kernel 5\.10\.0-1-amd64/);
});

test('compressed modules (.ko.gz in-process, .ko.xz and .ko.zst with the host tools) are stored uncompressed', async () => {
  const tools = ['xz', 'zstd'].filter((t) => spawnSync(t, ['--version']).status === 0);
  const mods: Record<string, [string, string[], Buffer]> = {
    base: ['kernel/base.ko.gz', [], gzipSync(fakeKo('base', []))],
  };
  const deps = ['base'];
  for (const t of tools) {
    const raw = fakeKo(`m_${t}`, ['base']);
    const packed = spawnSync(t, ['-c', '-q'], { input: raw }).stdout;
    mods[`m_${t}`] = [`kernel/m_${t}.ko.${t === 'xz' ? 'xz' : 'zst'}`, ['base'], packed];
    deps.push(`m_${t}`);
  }
  mods.top = ['kernel/top.ko', deps, fakeKo('top', deps)];
  const modulesDir = await fakeTree(mods, []);
  const tmp = await mkdtemp(join(tmpdir(), 'kmods-tmp-'));
  dirs.push(tmp);
  const r = await resolveModules({ modulesDir, version: VERSION, required: ['top'], optional: [], runner: new ProcessRunner(), tmpDir: tmp });
  assert.deepEqual(
    r.modules.map((m) => m.name),
    [...deps, 'top'],
  );
  for (const m of r.modules) {
    assert.ok(m.relPath.endsWith('.ko'), m.relPath);
    assert.equal(modinfoField(m.data, 'name'), m.name);
  }
  if (tools.length > 0) {
    await assert.rejects(
      resolveModules({ modulesDir, version: VERSION, required: ['top'], optional: [] }),
      /compressed; decompressing it needs a CommandRunner/,
    );
  }
});

/** A minimal ELF64 with a decoy string before .modinfo: real modules are read by section. */
function tinyElf(modinfo: string, decoy: string): Buffer {
  const shstrtab = Buffer.from('\0.rodata\0.modinfo\0.shstrtab\0');
  const rodata = Buffer.from(decoy);
  const info = Buffer.from(modinfo);
  const header = Buffer.alloc(64);
  const dataStart = 64;
  const offsets = [dataStart, dataStart + rodata.length, dataStart + rodata.length + info.length];
  const shoff = offsets[2]! + shstrtab.length;
  header.writeUInt32BE(0x7f454c46, 0);
  header[4] = 2; // 64-bit
  header[5] = 1; // little endian
  header.writeBigUInt64LE(BigInt(shoff), 0x28);
  header.writeUInt16LE(64, 0x3a);
  header.writeUInt16LE(4, 0x3c);
  header.writeUInt16LE(3, 0x3e);
  const sh = (name: number, offset: number, size: number) => {
    const b = Buffer.alloc(64);
    b.writeUInt32LE(name, 0);
    b.writeBigUInt64LE(BigInt(offset), 0x18);
    b.writeBigUInt64LE(BigInt(size), 0x20);
    return b;
  };
  return Buffer.concat([
    header,
    rodata,
    info,
    shstrtab,
    sh(0, 0, 0),
    sh(1, offsets[0]!, rodata.length),
    sh(9, offsets[1]!, info.length),
    sh(18, offsets[2]!, shstrtab.length),
  ]);
}

test('ELF modules are read from their .modinfo section only', () => {
  const elf = tinyElf('license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0', '\0depends=decoy\0');
  assert.deepEqual(moduleDepends(elf), ['virtio', 'virtio_ring']);
  assert.equal(modinfoField(elf, 'name'), 'virtio_blk');
  assert.deepEqual(moduleDepends(tinyElf('name=x\0depends=\0', '')), []);
});
