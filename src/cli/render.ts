import { BangerError, toBangerError } from '../api/errors.js';

/**
 * C0 (but \n, \t), DEL, C1; the bidi marks and controls (U+061C ALM, U+200E LRM, U+200F RLM,
 * U+202A–U+202E embeddings/overrides, U+2066–U+2069 isolates); and U+2028/U+2029, line and
 * paragraph separators some terminals and viewers break lines on.
 */
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/**
 * Text that came from a guest, an image or the daemon, made safe for a terminal: C0 controls
 * (except \n and \t), DEL, C1 controls (U+0080–U+009F, 8-bit CSI/OSC included), bidi marks
 * and overrides, and Unicode line/paragraph separators are removed, so no escape sequence
 * (title change, screen clear, hyperlink, cursor move, reordered or broken text) reaches the
 * terminal.
 */
export function sanitizeForTerminal(text: string): string {
  return text.replace(UNSAFE, '');
}

/** One table cell or value on one line: sanitized, and newlines/tabs become spaces. */
export function sanitizeInline(text: string): string {
  return sanitizeForTerminal(text).replace(/[\n\t]/g, ' ');
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Plain aligned columns (no borders): readable, greppable, stable for scripts that use awk. */
export function printTable(headers: string[], rows: Array<Array<string | number | null | undefined>>): void {
  const cells = rows.map((r) => r.map((c) => (c === null || c === undefined || c === '' ? '-' : sanitizeInline(String(c)))));
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
  for (const [k, v] of pairs) process.stdout.write(`${`${k}:`.padEnd(w + 2)}${v === null || v === undefined ? '-' : sanitizeInline(String(v))}\n`);
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
  // Messages can carry guest text (a serial console tail, a build's output).
  let text = `error: ${sanitizeForTerminal(e.message)}${op}\n`;
  if (e.fix) text += `fix: ${sanitizeForTerminal(e.fix)}\n`;
  return text;
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof BangerError && err.code === 'bad_request' && err.details === 'usage') return 2;
  return 1;
}
