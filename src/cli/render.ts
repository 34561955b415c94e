import { BangerError, toBangerError } from '../api/errors.js';

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Plain aligned columns (no borders): readable, greppable, stable for scripts that use awk. */
export function printTable(headers: string[], rows: Array<Array<string | number | null | undefined>>): void {
  const cells = rows.map((r) => r.map((c) => (c === null || c === undefined || c === '' ? '-' : String(c))));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  process.stdout.write(`${line(headers)}\n`);
  for (const r of cells) process.stdout.write(`${line(r)}\n`);
}

export function printKeyValues(pairs: Array<[string, string | number | null | undefined]>): void {
  const w = Math.max(...pairs.map(([k]) => k.length));
  for (const [k, v] of pairs) process.stdout.write(`${`${k}:`.padEnd(w + 2)}${v === null || v === undefined ? '-' : v}\n`);
}

export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** One shape for every error the CLI prints: message, fix, op id. */
export function formatError(err: unknown): string {
  const e = toBangerError(err);
  const op = e.opId ? ` (${e.opId})` : '';
  let text = `error: ${e.message}${op}\n`;
  if (e.fix) text += `fix: ${e.fix}\n`;
  return text;
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof BangerError && err.code === 'bad_request' && err.details === 'usage') return 2;
  return 1;
}
