/**
 * The `sync files` step of every VM start (docs/config.md, "File sync and git identity"): the
 * `[[file_sync]]` entries, then the host's global git identity into the guest's /root/.gitconfig.
 * Runs once the agent answers, through the VM's GuestChannel (injected, so tests use the fake).
 * A missing host path is a warning; anything else fails with an error naming the entry.
 *
 * The step runs under the VM's lock, so every guest call is bounded: each entry (and the git
 * identity) gets FILE_SYNC_ENTRY_MS, on top of the operation's own signal. A guest that accepts a
 * session and then stalls fails the start instead of holding the lock (`vm stop`/`delete`) forever.
 */
import { constants as fsc } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BangerError, toBangerError } from '../../api/errors.js';
import { splitGuestPath } from '../../api/files-wire.js';
import { packTree } from '../../archive/pack-tree.js';
import type { FileSyncEntry } from '../../config/config.js';
import type { GuestChannel } from '../../guest/guest-channel.js';
import type { CommandRunner } from '../../host/runner.js';
import { deadline } from '../../util/deadline.js';
import { formatDuration } from '../../util/duration.js';
import type { OpContext } from '../../util/op-context.js';
import { guestError } from './files.js';
import { type GitIdentity, identityValueProblem, mergeGitIdentity } from './git-identity.js';

export const DEFAULT_GUEST_GITCONFIG = '/root/.gitconfig';
/** A guest .gitconfig larger than this is left alone (it is read whole to be merged). */
export const GITCONFIG_MAX_BYTES = 1024 * 1024;
/** How long one `[[file_sync]]` entry (or the git identity) may take in the guest. */
export const FILE_SYNC_ENTRY_MS = 5 * 60_000;

export interface FileSyncDeps {
  entries: readonly FileSyncEntry[];
  /** The channel of the VM being started. */
  guest: (ref: string) => Promise<GuestChannel>;
  runner: CommandRunner;
  log: Logger;
  /** Where `~/` in a host path points (default: the daemon's user's home). */
  homeDir?: string;
  /** The host's global git identity (default: `git config --global --get` as the daemon's user). */
  gitIdentity?: () => Promise<GitIdentity>;
  /** The guest file the identity goes to (default /root/.gitconfig; tests of the fake guest, whose paths are host paths, move it). */
  gitconfigPath?: string;
  /** Bound of one entry (default FILE_SYNC_ENTRY_MS; tests shorten it). */
  entryTimeoutMs?: number;
}

/** Reads `git config --global --get KEY` for name and email; unset values and a missing git are skipped. */
export async function hostGitIdentity(runner: CommandRunner, log: Logger): Promise<GitIdentity> {
  const id: GitIdentity = {};
  for (const key of ['name', 'email'] as const) {
    try {
      const r = await runner.run('git', ['config', '--global', '--get', `user.${key}`], { allowFailure: true, timeoutMs: 5000, maxOutputBytes: 4096 });
      const v = r.stdout.replace(/\r?\n$/, '');
      if (r.code !== 0 || v === '') continue;
      const problem = identityValueProblem(v);
      if (problem) log.warn({ key }, `host git user.${key} ${problem}: not copied into VMs`);
      else id[key] = v;
    } catch (e) {
      log.debug({ err: e }, 'no host git identity (git not runnable)');
      return {};
    }
  }
  return id;
}

const isMissing = (e: unknown) =>
  (e as NodeJS.ErrnoException)?.code === 'ENOENT' ||
  (e instanceof BangerError && e.code === 'not_found') ||
  /no such file|ENOENT/i.test(String((e as Error)?.message));

export class FileSyncService {
  constructor(private readonly d: FileSyncDeps) {}

  private hostPath(p: string): string {
    return p.startsWith('~/') ? join(this.d.homeDir ?? homedir(), p.slice(2)) : p;
  }

  /** The step itself; shows the `sync files` stage only when there is something to copy. */
  async run(vm: { id: string; name: string }, ctx?: OpContext): Promise<void> {
    const identity = await (this.d.gitIdentity ?? (() => hostGitIdentity(this.d.runner, this.d.log)))();
    const hasIdentity = identity.name !== undefined || identity.email !== undefined;
    if (this.d.entries.length === 0 && !hasIdentity) return;
    const n = this.d.entries.length;
    const what = [n ? `${n} file_sync entr${n === 1 ? 'y' : 'ies'}` : '', hasIdentity ? 'git identity' : ''].filter(Boolean);
    ctx?.stage('sync files', what.join(', '));
    const warn = (msg: string) => {
      ctx?.log(`warning: ${msg}`);
      this.d.log.warn({ vm: vm.name }, msg);
    };
    const g = await this.d.guest(vm.id);
    const limitMs = this.d.entryTimeoutMs ?? FILE_SYNC_ENTRY_MS;
    /** The operation's signal plus this entry's deadline; `timedOut` tells the deadline's abort from a cancel. */
    const bounded = () => {
      const d = deadline(limitMs);
      return {
        signal: ctx ? AbortSignal.any([ctx.signal, d.signal]) : d.signal,
        timedOut: () => d.signal.aborted && !ctx?.signal.aborted,
        clear: d.clear,
      };
    };
    const timeoutError = (what: string) =>
      new BangerError('timeout', `${what} did not finish within ${limitMs < 1000 ? `${limitMs} ms` : formatDuration(limitMs)} (the guest stalled)`);
    for (const entry of this.d.entries) {
      const b = bounded();
      try {
        await this.syncEntry(g, entry, warn, b.signal);
        b.clear();
      } catch (e0) {
        b.clear();
        const e = b.timedOut() ? timeoutError('the copy') : e0;
        const err = e instanceof BangerError ? e : guestError(e, 'copy failed');
        throw new BangerError(
          err.code === 'not_found' ? 'precondition_failed' : err.code,
          `file_sync ${entry.host} → ${vm.name}:${entry.guest} failed: ${err.message}`,
          {
            fix: 'fix or remove this [[file_sync]] entry in config.toml (docs/config.md), then start the VM again',
            cause: e0,
          },
        );
      }
    }
    if (hasIdentity) {
      const b = bounded();
      await this.syncIdentity(g, identity, warn, b.signal, () => (b.timedOut() ? timeoutError('the merge') : undefined)).finally(b.clear);
    }
  }

  private async syncEntry(g: GuestChannel, entry: FileSyncEntry, warn: (m: string) => void, signal: AbortSignal): Promise<void> {
    const host = this.hostPath(entry.host);
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(host); // a symlink named in the config is the user's: followed
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return warn(`file_sync: ${host} does not exist on the host; skipped`);
      throw new BangerError('precondition_failed', `cannot read ${host}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (st.isFile()) {
      const fh = await open(host, fsc.O_RDONLY | fsc.O_NONBLOCK).catch((e: NodeJS.ErrnoException) => {
        throw new BangerError('precondition_failed', `cannot read ${host}: ${e.code ?? e.message}`);
      });
      try {
        await g.writeFile(entry.guest, fh.createReadStream({ autoClose: false }), { mode: entry.mode ?? st.mode & 0o777, mkdirs: true, signal });
      } finally {
        await fh.close();
      }
    } else if (st.isDirectory()) {
      const { dir, name } = splitGuestPath(entry.guest);
      const archive = packTree(host, {
        name,
        followTop: true,
        ...(entry.mode !== undefined ? { fileMode: entry.mode } : {}),
        onSkip: (p, why) => warn(`file_sync: ${p} is ${why}; skipped`),
      });
      await g.tarIn(dir, archive, { sameOwner: false, signal });
    } else {
      throw new BangerError('precondition_failed', `${host} is neither a file nor a directory`);
    }
  }

  private async syncIdentity(
    g: GuestChannel,
    identity: GitIdentity,
    warn: (m: string) => void,
    signal: AbortSignal,
    timedOut: () => BangerError | undefined,
  ): Promise<void> {
    const GUEST_GITCONFIG = this.d.gitconfigPath ?? DEFAULT_GUEST_GITCONFIG;
    try {
      let text = '';
      let mode = 0o644;
      const current = await g.stat(GUEST_GITCONFIG).catch((e) => (isMissing(e) ? undefined : Promise.reject(e)));
      if (current) {
        if (current.type !== 'file') return warn(`git identity: the guest's ${GUEST_GITCONFIG} is a ${current.type}, not a file; left alone`);
        if (current.size > GITCONFIG_MAX_BYTES) return warn(`git identity: the guest's ${GUEST_GITCONFIG} is larger than 1 MiB; left alone`);
        mode = current.mode & 0o777;
        const { stream, done } = await g.readFile(GUEST_GITCONFIG, signal);
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const c of stream) {
          size += (c as Buffer).length;
          if (size > GITCONFIG_MAX_BYTES) {
            stream.destroy();
            return warn(`git identity: the guest's ${GUEST_GITCONFIG} grew past 1 MiB; left alone`);
          }
          chunks.push(c as Buffer);
        }
        await done;
        text = Buffer.concat(chunks).toString('utf8');
      }
      const merged = mergeGitIdentity(text, identity);
      if (merged === text) return;
      await g.writeFile(GUEST_GITCONFIG, Readable.from([Buffer.from(merged)]), { mode, mkdirs: false, signal });
    } catch (e0) {
      const e = timedOut() ?? e0;
      const err = toBangerError(e instanceof BangerError ? e : guestError(e, 'git identity'));
      throw new BangerError(err.code, `git identity into ${GUEST_GITCONFIG} failed: ${err.message}`, {
        fix: 'check the guest (banger vm logs); unset the host identity to skip this step',
        cause: e0,
      });
    }
  }
}
