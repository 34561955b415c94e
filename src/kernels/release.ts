import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BangerError } from '../api/errors.js';
import { displayUrl, readUrl } from '../archive/download.js';
import type { CommandRunner } from '../host/runner.js';

export interface ReleaseEntry {
  size: number;
  sha256: string;
}

const MAX_RELEASE_BYTES = 4 * 1024 * 1024;

/** The SHA256 section of a (verified) Release file: index path → size and hash. */
export function parseReleaseSha256(text: string): Map<string, ReleaseEntry> {
  const out = new Map<string, ReleaseEntry>();
  let inSection = false;
  for (const line of text.split('\n')) {
    if (/^\S/.test(line)) {
      inSection = /^SHA256:\s*$/.test(line);
      continue;
    }
    if (!inSection) continue;
    const m = /^\s+([0-9a-f]{64})\s+(\d+)\s+(\S+)\s*$/i.exec(line);
    if (m) out.set(m[3] as string, { sha256: (m[1] as string).toLowerCase(), size: Number(m[2]) });
  }
  return out;
}

/** A top-level field of a Release file ("Valid-Until", "Date"), or undefined. */
export function releaseField(text: string, field: string): string | undefined {
  const lower = `${field.toLowerCase()}:`;
  for (const line of text.split('\n')) {
    if (/^\S/.test(line) && line.toLowerCase().startsWith(lower)) return line.slice(lower.length).trim();
  }
  return undefined;
}

/**
 * Enforces a signed Release's `Valid-Until` (as apt does): past it, a mirror (or anyone on the
 * path, the signature being intact) could be replaying an old index with since-fixed kernels.
 * Releases without the field (bookworm's has none) pass; an unreadable date is refused.
 */
export function checkReleaseValidity(text: string, where: string, now: Date): void {
  const until = releaseField(text, 'Valid-Until');
  if (until === undefined) return;
  const t = Date.parse(until);
  if (Number.isNaN(t)) {
    throw new BangerError('rejected_content', `${where} has a Valid-Until that is not a date: ${JSON.stringify(until.slice(0, 80))}`, {
      fix: 'the mirror serves a broken Release file: use another mirror',
    });
  }
  if (t < now.getTime()) {
    throw new BangerError('rejected_content', `${where} expired: its Valid-Until is ${new Date(t).toUTCString()} (now ${now.toUTCString()})`, {
      fix: "the mirror serves a stale (or replayed) index: use an up-to-date mirror (debian_mirror or the entry's mirror), or check the host clock",
    });
  }
}

/**
 * Fetches `<mirror>/dists/<suite>/InRelease` and checks its signature with gpgv against
 * `keyring` (Debian's archive keyring by default), as apt does. Only the signed text is used:
 * anything around the signature is dropped by gpgv. A signed `Valid-Until` in the past is refused.
 * Returns the SHA256 section, which then
 * vouches for the Packages index (and the index for the .deb), so the download chain is anchored
 * in the keyring even over plain HTTP.
 */
export async function fetchVerifiedRelease(
  runner: CommandRunner,
  mirror: string,
  suite: string,
  keyring: string,
  signal?: AbortSignal,
  now: Date = new Date(),
): Promise<Map<string, ReleaseEntry>> {
  if (
    !(await stat(keyring).then(
      (s) => s.isFile(),
      () => false,
    ))
  ) {
    throw new BangerError('missing_dependency', `the keyring ${keyring} that verifies Debian's package index is missing`, {
      fix: 'install it (apt-get install debian-archive-keyring) or point debian_keyring (config) at the archive keyring of your mirror',
    });
  }
  const url = `${mirror.replace(/\/+$/, '')}/dists/${suite}/InRelease`;
  const signed = await readUrl(
    url,
    MAX_RELEASE_BYTES,
    () => new BangerError('rejected_content', `${displayUrl(url)} is larger than ${MAX_RELEASE_BYTES} bytes`, { fix: 'check the mirror' }),
    signal,
  );
  const dir = await mkdtemp(join(tmpdir(), 'banger-release-'));
  try {
    await writeFile(join(dir, 'InRelease'), signed);
    const { code, stderr } = await runner.run('gpgv', ['--quiet', '--keyring', keyring, '--output', join(dir, 'Release'), join(dir, 'InRelease')], {
      allowFailure: true,
      maxOutputBytes: 8192,
      neededFor: "it verifies Debian's signed package index",
    });
    if (code !== 0) {
      throw new BangerError(
        'rejected_content',
        `the signature of ${displayUrl(url)} does not verify against ${keyring}: ${stderr.trim().split('\n').slice(-2).join('; ')}`,
        {
          fix: 'the mirror served an unsigned or tampered index (or one signed by a key not in the keyring); use a trusted mirror or set debian_keyring',
        },
      );
    }
    const release = await readFile(join(dir, 'Release'), 'utf8');
    // Only the signed text counts: a Valid-Until outside the signature is dropped by gpgv.
    checkReleaseValidity(release, displayUrl(url), now);
    return parseReleaseSha256(release);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
