/**
 * The boot gate scripts/test.sh runs before the end-to-end files: one real VM, booted with the real
 * CLI and daemon in a temporary home inside its own network namespace, exactly as the e2e files do.
 * If it cannot boot, every e2e file would only wait out its own timeouts: the gate prints why (the
 * CLI's error, the VM's serial console tail, the daemon's log tail) and exits 1, and test.sh stops
 * the e2e stage at once. Not a *.test.ts file: node --test never picks it up by itself.
 *
 *   node dist/test/e2e/boot-gate.js     exit 0: a VM reached a healthy agent; 1: it did not
 */
import { constants, readdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { guestAssets, TestHome } from '../helpers/banger.js';

/** The whole gate, boot included; a boot that needs longer is treated as a failure. */
const GATE_TIMEOUT_MS = Number(process.env.BANGER_GATE_TIMEOUT_MS ?? 420_000);

const say = (s: string) => process.stderr.write(`boot gate: ${s}\n`);

/** At most the last `lines` lines (each cut to 300 characters), control characters shown as '?'. */
function tail(text: string, lines: number): string {
  return text
    .split('\n')
    .slice(-lines)
    .map((l) => l.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, '?').slice(0, 300))
    .join('\n');
}

/** The last `bytes` of a regular file (never through a link), or '' when there is none. */
async function fileTail(path: string, bytes: number): Promise<string> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => undefined);
  if (!fh) return '';
  try {
    const st = await fh.stat();
    if (!st.isFile()) return '';
    const start = Math.max(0, st.size - bytes);
    const buf = Buffer.alloc(st.size - start);
    await fh.read(buf, 0, buf.length, start);
    return buf.toString('utf8');
  } finally {
    await fh.close();
  }
}

async function gate(): Promise<boolean> {
  const assets = guestAssets();
  if (!assets) {
    say('guest assets missing: run scripts/guest-assets.sh');
    return false;
  }
  const home = await TestHome.create('accel = "tcg"\n[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = "512M"\n', { netns: true });
  const deadline = Date.now() + GATE_TIMEOUT_MS;
  const left = () => Math.max(1000, deadline - Date.now());
  try {
    for (const args of [
      ['kernel', 'import', 'gate-kernel', '--from', assets.kernelDir],
      ['image', 'register', '--name', 'gate-image', '--rootfs', assets.rootfs, '--kernel-ref', 'gate-kernel'],
    ]) {
      const r = await home.banger(args, left());
      if (r.code !== 0) {
        say(`banger ${args.slice(0, 2).join(' ')} failed (exit ${r.code}):\n${tail(r.stdout + r.stderr, 40)}`);
        return false;
      }
    }
    const started = Date.now();
    const create = await home
      .banger(['vm', 'create', '--name', 'gate', '--image', 'gate-image'], left())
      .catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
    if (create.code === 0) {
      say(`a VM booted to a healthy agent in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      return true;
    }
    say(`vm create failed (exit ${create.code}):\n${tail(`${create.stdout}\n${create.stderr}`, 60)}`);
    const logs = await home.banger(['vm', 'logs', 'gate', '-n', '60'], 30_000).catch(() => undefined);
    if (logs?.code === 0 && logs.stdout.trim()) say(`serial console tail:\n${tail(logs.stdout, 60)}`);
    // The VMM's own output (QEMU refusing the kernel, a missing accelerator…) when it died early.
    const vmsDir = join(home.dir, 'state', 'vms');
    for (const id of (() => {
      try {
        return readdirSync(vmsDir);
      } catch {
        return [];
      }
    })()) {
      const vmm = await fileTail(join(vmsDir, id, 'vmm.log'), 4096);
      if (vmm.trim()) say(`VMM log tail:\n${tail(vmm, 30)}`);
    }
    const daemon = await home.banger(['daemon', 'logs', '-n', '30'], 30_000).catch(() => undefined);
    if (daemon?.code === 0 && daemon.stdout.trim()) say(`daemon log tail:\n${tail(daemon.stdout, 30)}`);
    return false;
  } finally {
    await home.destroy();
  }
}

const ok = await gate().catch((e: Error) => {
  say(`failed: ${e.stack ?? e.message}`);
  return false;
});
process.exit(ok ? 0 : 1);
