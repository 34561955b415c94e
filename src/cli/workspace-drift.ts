import { execFile } from 'node:child_process';
import { isAbsolute } from 'node:path';

/** What a VM records about its workspace, as far as the drift check needs it. */
export interface WorkspaceRef {
  hostPath: string;
  guestPath: string;
  baseCommit: string;
}

/** The workspace recorded on a VM (the `workspace` field; absent on daemons without workspaces). */
export function workspaceOf(vm: object): WorkspaceRef | undefined {
  const w = (vm as { workspace?: WorkspaceRef | null }).workspace;
  return w && typeof w.hostPath === 'string' && typeof w.guestPath === 'string' && typeof w.baseCommit === 'string' ? w : undefined;
}

/** The host repository's HEAD, or undefined when git or the repository is missing (never throws). */
export function gitHead(repo: string): Promise<string | undefined> {
  // The path came from the daemon: only an absolute one is used, and as one argv word (no shell).
  if (!isAbsolute(repo)) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    execFile(
      'git',
      ['-C', repo, 'rev-parse', '--verify', '-q', 'HEAD'],
      { timeout: 5000, maxBuffer: 4096, env: { ...process.env, GIT_OPTIONAL_LOCKS: '0' } },
      (err, stdout) => {
        const head = stdout?.trim();
        resolve(!err && head && /^[0-9a-f]{40,64}$/.test(head) ? head : undefined);
      },
    );
  });
}

/**
 * The warning `vm exec` prints when the host repository's HEAD moved since the workspace was
 * prepared (the guest works on an older base), or undefined: no move, or nothing to compare.
 */
export async function driftWarning(
  ws: WorkspaceRef,
  vmName: string,
  head: (repo: string) => Promise<string | undefined> = gitHead,
): Promise<string | undefined> {
  const now = await head(ws.hostPath);
  if (now === undefined || now === ws.baseCommit) return undefined;
  return `warning: ${ws.hostPath} is at ${now.slice(0, 12)} but ${vmName}'s workspace was prepared from ${ws.baseCommit.slice(0, 12)} (see banger vm workspace status ${vmName})`;
}
