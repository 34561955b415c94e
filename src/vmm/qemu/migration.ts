import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { type FileHandle, open, readdir, readlink, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmmError } from '../driver.js';
import type { QmpClient } from './qmp.js';

/**
 * The file side of QEMU memory snapshots (docs/privileges.md, "QEMU memory snapshots"). Guest RAM is
 * a memfd mapped shared (memory-backend-memfd share=on: no name anywhere, no tmpfs quota another
 * user can exhaust), so a snapshot is the device state, streamed by a `migrate` with
 * x-ignore-shared over a Unix socket the driver listens on (never `exec:`, which the seccomp
 * sandbox's spawn=deny kills), plus a sparse copy of the memfd read through /proc/<pid>/fd.
 *
 * Every file written here is created by us, O_EXCL|O_NOFOLLOW, 0600: a name that already exists
 * (a file, or a link planted there) is an error, never followed or overwritten.
 */

const EXCLUSIVE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** A device-state stream larger than this is not device state (RAM is in the shared file): refused. */
export const MAX_STATE_BYTES = 256 * 1024 * 1024;

/** What /proc/<pid>/fd/N of QEMU's guest-RAM memfd reads as (memory-backend-memfd names it after its type). */
const MEMFD_LINK = '/memfd:memory-backend-memfd (deleted)';

/**
 * Opens the guest-RAM memfd of a live QEMU (the caller checked pid, start time and boot id) through
 * /proc/<pid>/fd: the one memfd of that name whose size is the VM's memory. A magic link, so it
 * cannot be opened O_NOFOLLOW; what it opened is checked instead (a regular file with no name left,
 * exactly `bytes` long). `stillOurs` is asked again once it is open, so a pid recycled meanwhile is
 * never read from or written to.
 */
export async function openGuestMemory(pid: number, bytes: number, flags: number, stillOurs: () => Promise<boolean>): Promise<FileHandle> {
  const dir = `/proc/${pid}/fd`;
  const candidates: string[] = [];
  for (const fd of await readdir(dir).catch(() => [] as string[])) {
    if ((await readlink(`${dir}/${fd}`).catch(() => '')) === MEMFD_LINK) candidates.push(`${dir}/${fd}`);
  }
  for (const path of candidates) {
    const fh = await open(path, flags).catch(() => undefined);
    if (!fh) continue;
    const st = await fh.stat();
    if (st.isFile() && st.nlink === 0 && st.size === bytes && (await stillOurs())) return fh;
    await fh.close();
  }
  throw new VmmError(`QEMU (pid ${pid}) holds no guest-memory memfd of ${bytes} bytes: was it started with its RAM shared?`);
}

async function openExclusive(path: string, what: string): Promise<FileHandle> {
  try {
    return await open(path, EXCLUSIVE, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ELOOP') {
      throw new VmmError(`${what} ${path} already exists: it is never overwritten (another VMM may still use it); remove it if it is stale`);
    }
    throw new VmmError(`cannot create ${what} ${path}: ${(e as Error).message}`);
  }
}

/**
 * Copies `from` into a new file `to` (O_EXCL|O_NOFOLLOW, 0600), keeping holes: `cp --sparse=always
 * /dev/stdin /dev/stdout` run by node's child_process with both ends being descriptors opened here
 * (so cp never resolves either name, and a link at either path is refused, not followed). Returns
 * the bytes the copy occupies (allocated blocks), which for a guest's RAM is what it really used.
 * Removes `to` on failure.
 */
export async function sparseCopyExclusive(from: string, to: string, timeoutMs?: number): Promise<number> {
  const src = await open(from, constants.O_RDONLY | constants.O_NOFOLLOW).catch((e: Error) => {
    throw new VmmError(`cannot open ${from}: ${e.message}`);
  });
  try {
    return await copyOpenToNew(src, from, to, timeoutMs);
  } finally {
    await src.close();
  }
}

/** sparseCopyExclusive from a descriptor already open (the guest's memfd). */
export async function copyOpenToNew(src: FileHandle, from: string, to: string, timeoutMs?: number): Promise<number> {
  const st = await src.stat();
  if (!st.isFile()) throw new VmmError(`${from} is not a regular file`);
  const dst = await openExclusive(to, 'memory copy');
  try {
    await runTool('cp', ['--sparse=always', '--', '/dev/stdin', '/dev/stdout'], src.fd, dst.fd, timeoutMs ?? copyDeadline(st.size));
    await dst.sync();
    const out = await dst.stat();
    if (out.size !== st.size) throw new VmmError(`copying ${from} to ${to} wrote ${out.size} of ${st.size} bytes`);
    await dst.close();
    return out.blocks * 512;
  } catch (e) {
    await dst.close().catch(() => {});
    await rm(to, { force: true });
    throw e;
  }
}

/**
 * Writes a saved RAM image into the (fresh, zero) memfd of a QEMU waiting for its incoming state:
 * `dd conv=sparse` on descriptors, so all-zero blocks are skipped (they are zero already) and the
 * memfd is never truncated or reopened under QEMU's mapping. The image must be exactly its size.
 */
export async function fillOpenFromFile(from: string, dst: FileHandle, bytes: number, timeoutMs?: number): Promise<void> {
  const src = await open(from, constants.O_RDONLY | constants.O_NOFOLLOW).catch((e: Error) => {
    throw new VmmError(`cannot open the saved memory ${from}: ${e.message}`);
  });
  try {
    const st = await src.stat();
    if (!st.isFile() || st.size !== bytes) {
      throw new VmmError(`the saved memory ${from} holds ${st.size} bytes, the VM has ${bytes}: a restore needs the saved VM's memory size`);
    }
    await runTool('dd', ['bs=1M', 'conv=sparse', 'status=none'], src.fd, dst.fd, timeoutMs ?? copyDeadline(bytes));
  } finally {
    await src.close();
  }
}

/** At least 2 minutes, more for big memories (100 MB/s worst case). */
const copyDeadline = (bytes: number) => Math.max(120_000, Math.ceil(bytes / 100e6) * 1000);

function runTool(tool: string, args: string[], inFd: number, outFd: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { stdio: [inFd, outFd, 'pipe'] });
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (s: string) => {
      if (stderr.length < 4096) stderr += s;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new VmmError(`cannot run ${tool} for the memory copy: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new VmmError(`${tool} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
    });
  });
}

/**
 * A one-connection Unix socket server that writes what it receives into a new file (exclusive,
 * 0600, bounded by MAX_STATE_BYTES) and fsyncs it: the `migrate` target. `done` resolves with the
 * byte count once the sender closed the stream and the file is on disk.
 */
export class StateReceiver {
  private taken = false;
  private stream: Socket | undefined;
  readonly done: Promise<number>;
  private readonly server: Server;

  private constructor(
    private readonly socketPath: string,
    private readonly file: FileHandle,
    maxBytes: number,
  ) {
    let settle!: { resolve: (n: number) => void; reject: (e: Error) => void };
    this.done = new Promise<number>((resolve, reject) => {
      settle = { resolve, reject };
    });
    this.done.catch(() => {});
    this.server = createServer((sock: Socket) => {
      // One stream only: anything connecting after QEMU is turned away.
      if (this.taken) {
        sock.destroy();
        return;
      }
      this.taken = true;
      this.stream = sock;
      void receive(sock, file, maxBytes).then(settle.resolve, settle.reject);
    });
  }

  static async listen(socketPath: string, statePath: string, maxBytes = MAX_STATE_BYTES): Promise<StateReceiver> {
    const fh = await openExclusive(statePath, 'state file');
    await rm(socketPath, { force: true });
    const receiver = new StateReceiver(socketPath, fh, maxBytes);
    try {
      await new Promise<void>((resolve, reject) => {
        receiver.server.once('error', reject);
        receiver.server.listen({ path: socketPath, readableAll: false, writableAll: false }, () => resolve());
      });
    } catch (e) {
      await fh.close();
      await rm(statePath, { force: true });
      throw new VmmError(`cannot listen on ${socketPath} for the migration stream: ${(e as Error).message}`);
    }
    return receiver;
  }

  /** Stops listening and removes the socket; the file is closed (by the stream, or here if none came). */
  async close(): Promise<void> {
    this.stream?.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (!this.taken) await this.file.close().catch(() => {});
    await rm(this.socketPath, { force: true });
  }
}

async function receive(sock: Socket, fh: FileHandle, maxBytes: number): Promise<number> {
  let bytes = 0;
  try {
    for await (const chunk of sock as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      if (bytes > maxBytes) throw new VmmError(`the migration stream exceeded ${maxBytes} bytes: refused`);
      await fh.write(chunk);
    }
    await fh.sync();
    return bytes;
  } finally {
    sock.destroy();
    await fh.close();
  }
}

/** Connects to the Unix socket QEMU listens on for `migrate-incoming` and streams a saved state file into it. */
export async function sendStateFile(socketPath: string, statePath: string, timeoutMs: number): Promise<number> {
  const fh = await open(statePath, constants.O_RDONLY | constants.O_NOFOLLOW).catch((e: Error) => {
    throw new VmmError(`cannot open the saved state ${statePath}: ${e.message}`);
  });
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size > MAX_STATE_BYTES)
      throw new VmmError(`${statePath} is not a saved state (not a regular file, or over ${MAX_STATE_BYTES} bytes)`);
    const sock = await connectWhenListening(socketPath, timeoutMs);
    try {
      const buf = Buffer.alloc(1024 * 1024);
      let sent = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, sent);
        if (bytesRead === 0) break;
        sent += bytesRead;
        const chunk = Buffer.from(buf.subarray(0, bytesRead));
        if (!sock.write(chunk))
          await new Promise<void>((resolve, reject) => {
            const done = (e?: Error) => {
              sock.off('drain', done);
              sock.off('error', done);
              e ? reject(e) : resolve();
            };
            sock.once('drain', done);
            sock.once('error', done);
          });
      }
      await new Promise<void>((resolve) => sock.end(resolve));
      return sent;
    } finally {
      sock.destroy();
    }
  } finally {
    await fh.close();
  }
}

async function connectWhenListening(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await new Promise<Socket | Error>((resolve) => {
      const s = connect({ path });
      s.once('connect', () => resolve(s));
      s.once('error', (e) => resolve(e));
    });
    if (!(r instanceof Error)) return r;
    if (Date.now() >= deadline) throw new VmmError(`QEMU did not listen on ${path} for the incoming state within ${timeoutMs} ms: ${r.message}`);
    await sleep(20);
  }
}

export interface MigrationStatus {
  status: string;
  'error-desc'?: string;
  ram?: { transferred?: number };
}

/** Polls `query-migrate` until the migration completed (or failed, or the deadline passed: then it is cancelled). */
export async function waitForMigration(q: QmpClient, timeoutMs: number, what: string): Promise<MigrationStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await q.execute<MigrationStatus>('query-migrate');
    if (m.status === 'completed') return m;
    if (m.status === 'failed' || m.status === 'cancelled') {
      throw new VmmError(`QEMU ${what} ${m.status}${m['error-desc'] ? `: ${m['error-desc']}` : ''}`);
    }
    if (Date.now() >= deadline) {
      await q.execute('migrate_cancel').catch(() => {});
      throw new VmmError(`QEMU ${what} did not complete within ${timeoutMs} ms (last status: ${m.status || 'none'})`);
    }
    await sleep(20);
  }
}

/** x-ignore-shared: RAM in a shared memory backend is not sent (it is in the file); both ends must set it. */
export const IGNORE_SHARED = { capabilities: [{ capability: 'x-ignore-shared', state: true }] };
