import { InvalidArgumentError } from 'commander';
import { parseSize } from '../util/duration.js';

/** Option parsers: a malformed value is a usage error (exit 2) with the expected form. */
export function intArg(name: string) {
  return (v: string): number => {
    if (!/^-?\d+$/.test(v.trim())) throw new InvalidArgumentError(`${name} must be an integer, got "${v}"`);
    return Number(v);
  };
}

/** "1024" is MiB; "2G", "512M" are explicit. */
export function memoryArg(v: string): number {
  if (/^\d+$/.test(v.trim())) return Number(v);
  const bytes = parseSize(v);
  if (bytes === undefined) throw new InvalidArgumentError(`--memory takes MiB or a size like "2G", got "${v}"`);
  return Math.floor(bytes / 1024 / 1024);
}

export function sizeArg(v: string): number {
  const bytes = parseSize(v);
  if (bytes === undefined) throw new InvalidArgumentError(`expected a size like "8G" or "512M", got "${v}"`);
  return bytes;
}

export function onOff(v: string): boolean {
  if (v === 'on' || v === 'true') return true;
  if (v === 'off' || v === 'false') return false;
  throw new InvalidArgumentError(`expected "on" or "off", got "${v}"`);
}
