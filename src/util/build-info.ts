import { readFileSync } from 'node:fs';

export interface BuildInfo {
  version: string;
  commit: string;
  buildTime: string;
}

let cached: BuildInfo | undefined;

/** Stamped by scripts/build.mjs into dist/build-info.json (this file is dist/src/util/build-info.js). */
export function buildInfo(): BuildInfo {
  if (cached) return cached;
  try {
    cached = JSON.parse(readFileSync(new URL('../../build-info.json', import.meta.url), 'utf8')) as BuildInfo;
  } catch {
    cached = { version: '0.0.0-dev', commit: 'unknown', buildTime: 'unknown' };
  }
  return cached;
}

export function versionText(program: string): string {
  const b = buildInfo();
  return [
    `${program} ${b.version}`,
    `commit:     ${b.commit}`,
    `built:      ${b.buildTime}`,
    `node:       ${process.version}`,
    `platform:   ${process.platform}/${process.arch}`,
  ].join('\n');
}
