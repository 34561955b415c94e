/**
 * A FAKE GuestChannel for unit tests of the services above it (workspaces, files, file sync):
 * "the guest" is this host. Processes run here with child_process, paths are host paths (tests
 * choose guest paths under their own temp dirs), tar streams use the host's tar. It is not the
 * agent: the real channel is tested against the real agent in test/integration and on real VMs.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, readlink, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { GuestChannel, GuestDirEntry, GuestProc, GuestProcSpec, GuestStat, OutputOptions, OutputStream } from '../../src/guest/guest-channel.js';

interface FakeProc {
  info: GuestProc;
  stdout: Buffer[];
  stderr: Buffer[];
  stdinSink: NodeJS.WritableStream | null;
  exited: Promise<void>;
  kill: (signal: number) => void;
}

function typeOf(s: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }): GuestStat['type'] {
  return s.isSymbolicLink() ? 'symlink' : s.isDirectory() ? 'dir' : s.isFile() ? 'file' : 'other';
}

export class HostFakeGuest implements GuestChannel {
  readonly procs = new Map<string, FakeProc>();
  /** Every spec started, in order (tests assert on what a service asked the guest to run). */
  readonly started: GuestProcSpec[] = [];

  async startProcess(spec: GuestProcSpec): Promise<GuestProc> {
    const existing = this.procs.get(spec.id);
    if (existing) return existing.info;
    this.started.push(spec);
    const argv = spec.shell !== undefined ? ['/bin/sh', '-c', spec.shell] : (spec.argv ?? []);
    const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', LANG: 'C.UTF-8' };
    for (const kv of spec.env ?? []) {
      const at = kv.indexOf('=');
      env[kv.slice(0, at)] = kv.slice(at + 1);
    }
    const info: GuestProc = {
      id: spec.id,
      name: spec.name ?? null,
      argv: spec.argv ?? null,
      shell: spec.shell ?? null,
      pid: null,
      pty: false,
      state: 'running',
      exitCode: null,
      signal: null,
      timedOut: false,
      code: null,
      startedMs: Date.now(),
      endedMs: null,
      stdoutBytes: 0,
      stderrBytes: 0,
      truncated: false,
      stdin: spec.stdin === 'pipe' ? 'open' : 'null',
      stdinBytes: 0,
    };
    const child = spawn(argv[0] as string, argv.slice(1), {
      cwd: spec.cwd,
      env,
      stdio: [spec.stdin === 'pipe' ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      detached: true,
    });
    info.pid = child.pid ?? null;
    const fake: FakeProc = {
      info,
      stdout: [],
      stderr: [],
      stdinSink: child.stdin,
      exited: Promise.resolve(),
      kill: (signal) => {
        if (child.pid) process.kill(-child.pid, signal);
      },
    };
    child.stdout?.on('data', (b: Buffer) => {
      fake.stdout.push(b);
      info.stdoutBytes += b.length;
    });
    child.stderr?.on('data', (b: Buffer) => {
      fake.stderr.push(b);
      info.stderrBytes += b.length;
    });
    let timer: NodeJS.Timeout | undefined;
    if (spec.timeoutMs) {
      timer = setTimeout(() => {
        info.timedOut = true;
        fake.kill(9);
      }, spec.timeoutMs);
    }
    fake.exited = new Promise<void>((resolve) => {
      child.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        Object.assign(info, { state: 'exited', exitCode: 127, code: e.code === 'ENOENT' ? 'command_not_found' : 'exec_failed', endedMs: Date.now() });
        resolve();
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        Object.assign(info, {
          state: 'exited',
          exitCode: code,
          signal: signal ? (signalNumbers[signal] ?? 0) : null,
          endedMs: Date.now(),
        });
        resolve();
      });
    });
    this.procs.set(spec.id, fake);
    return info;
  }

  private get(id: string): FakeProc {
    const p = this.procs.get(id) ?? [...this.procs.values()].find((x) => x.info.name === id);
    if (!p) throw new Error(`no such process ${id}`);
    return p;
  }

  listProcesses = async () => [...this.procs.values()].map((p) => p.info);
  showProcess = async (id: string) => this.get(id).info;
  async signalProcess(id: string, signal: number) {
    this.get(id).kill(signal);
    return this.get(id).info;
  }
  async resizeProcess() {}
  async writeStdin(id: string, offset: number, data: Buffer) {
    const p = this.get(id);
    const skip = Math.max(0, p.info.stdinBytes - offset);
    if (offset > p.info.stdinBytes) throw new Error(`stdin gap: have ${p.info.stdinBytes}`);
    const rest = data.subarray(skip);
    if (rest.length) p.stdinSink?.write(rest);
    p.info.stdinBytes += rest.length;
    return p.info.stdinBytes;
  }
  async closeStdin(id: string) {
    const p = this.get(id);
    p.stdinSink?.end();
    p.info.stdin = 'closed';
    return p.info.stdinBytes;
  }
  async forgetProcess(id: string) {
    const p = this.get(id);
    if (p.info.state === 'running') throw new Error('running');
    this.procs.delete(p.info.id);
  }

  async output(id: string, opts: OutputOptions, onData: (stream: OutputStream, data: Buffer) => Promise<void> | void): Promise<GuestProc> {
    const p = this.get(id);
    if (opts.stdin) {
      void (async () => {
        for await (const chunk of opts.stdin as AsyncIterable<Buffer>) await this.writeStdin(id, p.info.stdinBytes, chunk);
        await this.closeStdin(id);
      })();
    }
    if (opts.follow) {
      // As the real channel: the caller's signal ends a follow (the process keeps running).
      const signal = opts.signal;
      let onAbort: (() => void) | undefined;
      const aborted = new Promise<never>((_, reject) => {
        onAbort = () => reject(signal?.reason ?? new Error('aborted'));
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });
      });
      aborted.catch(() => {});
      try {
        await Promise.race([p.exited, aborted]);
      } finally {
        if (onAbort) signal?.removeEventListener('abort', onAbort);
      }
    }
    const out = Buffer.concat(p.stdout).subarray(opts.stdoutFrom);
    const err = Buffer.concat(p.stderr).subarray(opts.stderrFrom);
    if (out.length) await onData('stdout', out);
    if (err.length) await onData('stderr', err);
    return p.info;
  }

  async readFile(path: string) {
    const s = await lstat(path);
    if (!s.isFile()) throw new Error(`${path} is not a regular file`);
    const stream = createReadStream(path);
    const done = once(stream, 'close').then(() => ({ size: s.size, mode: s.mode & 0o7777 }));
    return { stream: stream as Readable, done };
  }
  async writeFile(path: string, data: Readable, opts: { mode: number; mkdirs: boolean }) {
    if (opts.mkdirs) await mkdir(dirname(path), { recursive: true });
    const tmp = `${dirname(path)}/.${basename(path)}.fake-${process.pid}`;
    await pipeline(data, createWriteStream(tmp, { flags: 'wx', mode: opts.mode }));
    await rename(tmp, path);
    return { size: (await stat(path)).size };
  }
  async tarOut(path: string) {
    const child = spawn('tar', ['-c', '-f', '-', '-C', dirname(path), basename(path)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const stream = new PassThrough();
    child.stdout.pipe(stream);
    const done = once(child, 'close').then(([code]) => {
      if (code !== 0) throw new Error(`tar -c exited ${code}`);
    });
    return { stream: stream as Readable, done };
  }
  async tarIn(path: string, data: Readable, opts?: { sameOwner?: boolean }) {
    await mkdir(path, { recursive: true });
    const child = spawn('tar', ['-x', '-f', '-', '-C', path, ...(opts?.sameOwner ? [] : ['--no-same-owner'])], { stdio: ['pipe', 'ignore', 'inherit'] });
    const closed = once(child, 'close');
    await pipeline(data, child.stdin);
    const [code] = await closed;
    if (code !== 0) throw new Error(`tar -x exited ${code}`);
  }
  async pipeIn(argv: string[], cwd: string, data: Readable) {
    const [cmd, ...args] = argv as [string, ...string[]];
    const child = spawn(cmd, args, { cwd, stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    const closed = once(child, 'close');
    await pipeline(data, child.stdin);
    const [code] = await closed;
    if (code !== 0) throw new Error(`${cmd} exited ${code}: ${stderr.trim()}`);
  }
  async stat(path: string): Promise<GuestStat> {
    const s = await lstat(path);
    return {
      type: typeOf(s),
      mode: s.mode & 0o7777,
      size: s.size,
      mtimeMs: Math.floor(s.mtimeMs),
      uid: s.uid,
      gid: s.gid,
      linkTarget: s.isSymbolicLink() ? await readlink(path) : null,
    };
  }
  async list(path: string) {
    const entries: GuestDirEntry[] = [];
    for (const name of await readdir(path)) {
      const s = await lstat(`${path}/${name}`);
      entries.push({ name, type: typeOf(s), mode: s.mode & 0o7777, size: s.size, mtimeMs: Math.floor(s.mtimeMs) });
    }
    return { entries, truncated: false };
  }
  async mkdir(path: string, opts?: { mode?: number; parents?: boolean }) {
    await mkdir(path, { recursive: opts?.parents ?? false, mode: opts?.mode ?? 0o755 });
  }
  async move(from: string, to: string) {
    await rename(from, to);
  }
  async remove(path: string, opts?: { recursive?: boolean }) {
    await rm(path, { recursive: opts?.recursive ?? false });
  }
}

const signalNumbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGPIPE: 13 };
