import { createHash } from 'node:crypto';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BangerError } from '../api/errors.js';
import { byteLimit, type Compression, decompressor } from '../archive/decompress.js';
import { displayUrl, openUrl } from '../archive/download.js';
import type { CommandRunner } from '../host/runner.js';
import type { ReleaseEntry } from './release.js';

/** One stanza of a Packages file, keys as written ("Package", "Depends", "SHA256", ...). */
export type Stanza = Record<string, string>;

/** A package resolved to the file to download. */
export interface ResolvedPackage {
  package: string;
  version: string;
  /** Path relative to the mirror root (pool/main/l/linux/…deb). */
  filename: string;
  url: string;
  sha256: string;
  size: number;
}

/** Parses Debian control stanzas (blank-line separated, "Key: value", continuation lines indented). */
export function parseStanzas(text: string, keep?: (pkg: string) => boolean): Stanza[] {
  const out: Stanza[] = [];
  let cur: Stanza = {};
  let last: string | undefined;
  const flush = () => {
    if (cur.Package !== undefined && (!keep || keep(cur.Package))) out.push(cur);
    cur = {};
    last = undefined;
  };
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      flush();
      continue;
    }
    if (line.startsWith(' ') || line.startsWith('\t')) {
      if (last !== undefined) cur[last] += `\n${line.trim()}`;
      continue;
    }
    const i = line.indexOf(':');
    if (i <= 0) continue;
    last = line.slice(0, i);
    cur[last] = line.slice(i + 1).trim();
  }
  flush();
  return out;
}

/** Dependency names with optional "(= version)" constraints, in order; alternatives ("a | b") flattened. */
export function parseDepends(value: string | undefined): Array<{ name: string; version?: string }> {
  if (!value) return [];
  const out: Array<{ name: string; version?: string }> = [];
  for (const alt of value.split(/[,|]/)) {
    const m = /^\s*([a-z0-9][a-z0-9.+-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*=\s*([^)\s]+)\s*\))?/.exec(alt);
    if (m) out.push(m[2] ? { name: m[1] as string, version: m[2] } : { name: m[1] as string });
  }
  return out;
}

/**
 * Debian version comparison (dpkg's algorithm: epoch, then upstream and revision compared in
 * alternating non-digit and digit runs, `~` sorting before everything).
 */
export function compareDebianVersions(a: string, b: string): number {
  const split = (v: string) => {
    const e = v.indexOf(':');
    const epoch = e > 0 ? Number(v.slice(0, e)) : 0;
    const rest = e > 0 ? v.slice(e + 1) : v;
    const d = rest.lastIndexOf('-');
    return { epoch, up: d >= 0 ? rest.slice(0, d) : rest, rev: d >= 0 ? rest.slice(d + 1) : '' };
  };
  const order = (c: string | undefined) => (c === undefined ? 0 : c === '~' ? -1 : /[a-zA-Z]/.test(c) ? c.charCodeAt(0) : c.charCodeAt(0) + 256);
  const cmpPart = (x: string, y: string): number => {
    let i = 0;
    let j = 0;
    while (i < x.length || j < y.length) {
      while ((i < x.length && !/\d/.test(x[i] as string)) || (j < y.length && !/\d/.test(y[j] as string))) {
        const cx = i < x.length && !/\d/.test(x[i] as string) ? x[i] : undefined;
        const cy = j < y.length && !/\d/.test(y[j] as string) ? y[j] : undefined;
        const diff = order(cx) - order(cy);
        if (diff !== 0) return diff;
        if (cx !== undefined) i++;
        if (cy !== undefined) j++;
      }
      let nx = '';
      let ny = '';
      while (i < x.length && /\d/.test(x[i] as string)) nx += x[i++];
      while (j < y.length && /\d/.test(y[j] as string)) ny += y[j++];
      const diff = Number(nx || 0) - Number(ny || 0);
      if (diff !== 0) return diff;
    }
    return 0;
  };
  const A = split(a);
  const B = split(b);
  return A.epoch - B.epoch || cmpPart(A.up, B.up) || cmpPart(A.rev, B.rev);
}

/**
 * Resolves a package in a parsed index: a meta package (e.g. linux-image-cloud-amd64) is followed
 * through its Depends to the versioned linux-image-* package, whose Filename, Size and SHA256 are
 * what gets downloaded. The newest version wins when the index lists several.
 */
export function resolveKernelPackage(stanzas: Stanza[], pkg: string, mirror: string, where = 'the package index'): ResolvedPackage {
  const byName = new Map<string, Stanza[]>();
  for (const s of stanzas) {
    const name = s.Package as string;
    const list = byName.get(name) ?? [];
    list.push(s);
    byName.set(name, list);
  }
  const pick = (name: string, version?: string): Stanza | undefined => {
    const list = (byName.get(name) ?? []).filter((s) => version === undefined || s.Version === version);
    return list.sort((x, y) => compareDebianVersions(y.Version ?? '', x.Version ?? ''))[0];
  };
  let stanza = pick(pkg);
  if (!stanza) {
    throw new BangerError('not_found', `package ${pkg} is not in ${where}`, { fix: 'check the catalog entry (suite, component, package) and the mirror' });
  }
  const seen = new Set<string>([pkg]);
  for (;;) {
    const current: Stanza = stanza;
    const dep = parseDepends(current.Depends).find((d) => d.name.startsWith('linux-image-') && !seen.has(d.name));
    if (!dep) break;
    const next = pick(dep.name, dep.version);
    if (!next) {
      throw new BangerError(
        'upstream_failed',
        `${current.Package} depends on ${dep.name}${dep.version ? ` (= ${dep.version})` : ''}, which is not in ${where}`,
        {
          fix: 'the mirror may be mid-sync: retry later or use another mirror',
        },
      );
    }
    seen.add(dep.name);
    stanza = next;
    if (seen.size > 4) break;
  }
  const { Package: name, Version: version, Filename: filename, SHA256: sha256, Size: size } = stanza;
  if (!name || !version || !filename || !sha256 || !size || !/^[0-9a-f]{64}$/i.test(sha256) || !/^\d+$/.test(size)) {
    throw new BangerError('upstream_failed', `the stanza of ${name ?? pkg} in ${where} lacks Version, Filename, Size or SHA256`, { fix: 'check the mirror' });
  }
  if (filename.startsWith('/') || filename.split('/').includes('..')) {
    throw new BangerError('rejected_content', `the stanza of ${name} in ${where} has a suspicious Filename "${filename}"`, { fix: 'check the mirror' });
  }
  return { package: name, version, filename, url: `${mirror.replace(/\/+$/, '')}/${filename}`, sha256: sha256.toLowerCase(), size: Number(size) };
}

const INDEX_MAX_BYTES = 512 * 1024 * 1024;
const INDEX_VARIANTS: Array<{ suffix: string; compression: Compression }> = [
  { suffix: '.xz', compression: 'xz' },
  { suffix: '.gz', compression: 'gzip' },
  { suffix: '', compression: 'none' },
];

/**
 * Fetches `<mirror>/dists/<suite>/<component>/binary-amd64/Packages{.xz,.gz,}` (the first that
 * exists) and keeps the linux-image-* stanzas.
 */
export async function fetchKernelStanzas(
  runner: CommandRunner,
  mirror: string,
  suite: string,
  component: string,
  signal?: AbortSignal,
  /** The verified Release's SHA256 section: when given, the index must be listed there and match. */
  release?: Map<string, ReleaseEntry>,
): Promise<{ stanzas: Stanza[]; url: string }> {
  const base = `${mirror.replace(/\/+$/, '')}/dists/${suite}/${component}/binary-amd64/Packages`;
  let lastErr: unknown;
  for (const v of INDEX_VARIANTS) {
    const url = base + v.suffix;
    const expected = release?.get(`${component}/binary-amd64/Packages${v.suffix}`);
    if (release && !expected) continue;
    let body: Readable;
    try {
      ({ body } = await openUrl(url, signal));
    } catch (e) {
      lastErr = e;
      if (e instanceof BangerError && e.code === 'upstream_failed' && /HTTP 404/.test(e.message)) continue;
      throw e;
    }
    const hash = createHash('sha256');
    let bytes = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _e, cb) {
        hash.update(chunk);
        bytes += chunk.length;
        cb(null, chunk);
      },
    });
    const text = byteLimit(INDEX_MAX_BYTES, displayUrl(url));
    const flowing = pipeline(body, meter, decompressor(v.compression, runner), text, signal ? { signal } : {});
    flowing.catch(() => {}); // the same error ends the iteration below
    const stanzas = await collectStanzas(text, (p) => p.startsWith('linux-image-'));
    await flowing;
    if (expected) {
      const actual = hash.digest('hex');
      if (actual !== expected.sha256 || bytes !== expected.size) {
        throw new BangerError(
          'rejected_content',
          `${displayUrl(url)} does not match the signed Release (sha256 ${actual}, ${bytes} bytes; expected ${expected.sha256}, ${expected.size} bytes)`,
          {
            fix: 'the mirror is mid-sync or serving tampered files: retry later or use another mirror',
          },
        );
      }
    }
    return { stanzas, url };
  }
  if (release) {
    throw new BangerError('upstream_failed', `the signed Release of ${displayUrl(mirror)} ${suite} lists no ${component}/binary-amd64/Packages index`, {
      fix: 'check the suite and component of the catalog entry',
    });
  }
  throw lastErr instanceof Error ? lastErr : new BangerError('upstream_failed', `no package index at ${displayUrl(base)}{.xz,.gz,}`);
}

/** Streams stanzas out of a Packages file without holding the whole text. */
async function collectStanzas(stream: Readable, keep: (pkg: string) => boolean): Promise<Stanza[]> {
  const out: Stanza[] = [];
  let rest = '';
  stream.setEncoding('utf8');
  for await (const chunk of stream as AsyncIterable<string>) {
    rest += chunk;
    const cut = rest.lastIndexOf('\n\n');
    if (cut < 0) continue;
    out.push(...parseStanzas(rest.slice(0, cut), keep));
    rest = rest.slice(cut + 2);
  }
  out.push(...parseStanzas(rest, keep));
  return out;
}
