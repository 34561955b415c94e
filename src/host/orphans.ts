import { readdir, readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Processes of this user whose argv names a path under `dir` (a VMM names its sockets and disks
 * there). This is how the daemon finds a VMM it launched but died before recording: the path is
 * the tag. Another user's processes are never returned, so never killed, except those of
 * `vmmUids`: the `vmm_user` a root daemon's QEMU dropped to (-runas), whose /proc entry then
 * belongs to that user.
 */
export async function processesNaming(dir: string, opts: { vmmUids?: readonly number[] } = {}): Promise<Array<{ pid: number; argv: string[] }>> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const own = process.getuid?.() ?? -1;
  // Only a root daemon can have started a VMM that changed its uid.
  const uids = new Set([own, ...(own === 0 ? (opts.vmmUids ?? []) : [])]);
  const found: Array<{ pid: number; argv: string[] }> = [];
  for (const e of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (!uids.has((await stat(`/proc/${e}`)).uid)) continue;
      const argv = (await readFile(`/proc/${e}/cmdline`, 'utf8')).split('\0').filter(Boolean);
      if (argv.some((a) => a.includes(prefix))) found.push({ pid: Number(e), argv });
    } catch {
      /* exited while we looked */
    }
  }
  return found;
}

/** SIGKILL, then wait (bounded) until the pid is gone or a zombie. */
export async function killNow(pid: number, waitMs = 5000): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    const st = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    if (!st || st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) === 'Z') return;
    await sleep(20);
  }
}
