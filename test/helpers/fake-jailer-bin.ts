import { chownSync, copyFileSync, existsSync, lstatSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { chrootDirOf, parseJailerArgv } from './fake-jailer-spec.js';

/**
 * A FAKE Firecracker `jailer` (run with node) for the driver's tests. It checks its argv against
 * the typed description of the jailer's documented arguments (fake-jailer-spec.ts) and refuses
 * what the real one refuses, builds the jail the documented way (`<chroot_base>/<exec name>/<id>/root`,
 * exec file copied in, chroot chowned to uid:gid when run as root), then "execs" the FAKE
 * Firecracker in this same process (as the real jailer's exec keeps the pid) with
 * `--id=<id> --start-time-us=… --start-time-cpu-us=…` and the arguments after `--`.
 * Differences from the real one, on purpose: no mount namespace, pivot_root, mknod, cgroup or uid
 * change (the fake Firecracker resolves every path inside the jail itself, via FAKE_FC_CHROOT),
 * and the FAKE_FC_* test knobs survive (the real jailer clears the environment).
 *   FAKE_JAILER_RECORD=file   write the argv there as JSON
 */
const argv = process.argv.slice(2);
const { parsed, errors } = parseJailerArgv(argv);
if (process.env.FAKE_JAILER_RECORD) writeFileSync(process.env.FAKE_JAILER_RECORD, JSON.stringify(argv));
if (errors.length > 0) {
  process.stderr.write(`fake-jailer: ${errors.join('; ')}\n`);
  process.exit(1);
}
const one = (flag: string) => parsed.values.get(flag)?.[0] as string;
const netns = parsed.values.get('--netns')?.[0];
if (netns !== undefined && !existsSync(netns)) {
  process.stderr.write(`fake-jailer: Failed to open the netns ${netns}\n`);
  process.exit(1);
}
const execFile = one('--exec-file');
const chroot = chrootDirOf(parsed);
mkdirSync(chroot, { recursive: true });
const st = lstatSync(chroot);
if (!st.isDirectory()) {
  process.stderr.write(`fake-jailer: ${chroot} is not a directory\n`);
  process.exit(1);
}
copyFileSync(execFile, join(chroot, basename(execFile)));
if (process.getuid?.() === 0) chownSync(chroot, Number(one('--uid')), Number(one('--gid')));

process.env.FAKE_FC_CHROOT = chroot;
process.argv = [
  process.execPath,
  new URL('./fake-firecracker-bin.js', import.meta.url).pathname,
  `--id=${one('--id')}`,
  '--start-time-us=1',
  '--start-time-cpu-us=1',
  ...parsed.firecrackerArgs,
];
await import('./fake-firecracker-bin.js');
