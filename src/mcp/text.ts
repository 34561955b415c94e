/**
 * Bounded, printable text for MCP results. Everything a guest produced (command output, file
 * contents, file names) is hostile: control characters are removed before it is shown to a model
 * or a person, and every result is bounded so one tool call cannot flood the caller's context.
 * Budgets are counted in characters of the JSON serialisation (what actually goes on the wire and
 * into the model's context), so quotes, backslashes and newlines count twice.
 */

/** The ceiling of one whole serialised tool result (structuredContent and its text copy). */
export const MAX_RESULT_CHARS = 20_000;
/**
 * The ceiling of the serialised structuredContent. A result carries it twice (the object and, for
 * clients that read only text, the same JSON as text), plus a small envelope.
 */
export const MAX_STRUCTURED_CHARS = 9_400;

/**
 * C0 (but \n, \t), DEL, C1; bidi marks and overrides; Unicode line/paragraph separators: the same
 * set the CLI strips before a terminal (src/cli/render.ts), lone surrogates too (they serialise as
 * \uXXXX escapes and are never meaningful text). Also what a reader cannot see but a model reads:
 * zero-width characters (U+200B–U+200D, U+2060–U+2064, U+FEFF), interlinear annotation marks
 * (U+FFF9–U+FFFB) and the tag characters (U+E0000–U+E007F, the surrogate pairs \udb40\udc00–\udc7f)
 * a guest could hide instructions in.
 */
const UNSAFE =
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]|\udb40[\udc00-\udc7f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** Text with every control and bidi character removed (\n and \t kept). */
export function sanitize(text: string): string {
  return text.replace(UNSAFE, '');
}

/** One line: sanitised, newlines and tabs become spaces, at most `max` characters. */
export function sanitizeInline(text: string, max = 200): string {
  const s = sanitize(text).replace(/[\n\t]/g, ' ');
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Characters a code unit takes inside a JSON string (sanitised text holds no other escapes). */
function escapedCost(code: number): number {
  if (code === 0x22 || code === 0x5c || code === 0x0a || code === 0x09 || code === 0x0d || code === 0x08 || code === 0x0c) return 2;
  return code < 0x20 ? 6 : 1;
}

/** The length of `JSON.stringify(text)` without its two quotes, computed without building it. */
export function jsonLength(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) n += escapedCost(text.charCodeAt(i));
  return n;
}

/** The longest prefix of text whose JSON form fits in `budget` (never splits a surrogate pair). */
export function prefixWithin(text: string, budget: number): string {
  let n = 0;
  let i = 0;
  for (; i < text.length; i++) {
    const c = escapedCost(text.charCodeAt(i));
    if (n + c > budget) break;
    n += c;
  }
  if (i > 0 && i < text.length && /[\ud800-\udbff]/.test(text[i - 1] as string)) i--;
  return text.slice(0, i);
}

/** The longest suffix of text whose JSON form fits in `budget`. */
export function suffixWithin(text: string, budget: number): string {
  let n = 0;
  let i = text.length;
  for (; i > 0; i--) {
    const c = escapedCost(text.charCodeAt(i - 1));
    if (n + c > budget) break;
    n += c;
  }
  if (i < text.length && i > 0 && /[\udc00-\udfff]/.test(text[i] as string)) i++;
  return text.slice(i);
}

export interface CappedText {
  text: string;
  /** True when the middle was cut out (the marker says how much). */
  truncated: boolean;
}

/**
 * `text` sanitised and, when its JSON form exceeds `budget`, cut to its head and tail with a
 * marker line between them naming how many characters were left out. The tail gets the larger
 * share: the end of a build or test log is where the failure is.
 */
export function capText(raw: string, budget: number): CappedText {
  const text = sanitize(raw);
  if (jsonLength(text) <= budget) return { text, truncated: false };
  const marker = (omitted: number) => `\n[… ${omitted} characters omitted …]\n`;
  const room = Math.max(0, budget - jsonLength(marker(text.length)));
  const head = prefixWithin(text, Math.floor(room * 0.4));
  const tail = suffixWithin(text.slice(head.length), room - jsonLength(head));
  return { text: head + marker(text.length - head.length - tail.length) + tail, truncated: true };
}

/**
 * The longest prefix of `items` whose JSON array fits in `budget` characters, and whether items
 * were left out: lists (files, VMs, processes) are cut by size, not only by count.
 */
export function fitList<T>(items: readonly T[], budget: number): { items: T[]; truncated: boolean } {
  const out: T[] = [];
  let used = 2;
  for (const item of items) {
    const cost = JSON.stringify(item).length + 1;
    if (used + cost > budget) return { items: out, truncated: true };
    used += cost;
    out.push(item);
  }
  return { items: out, truncated: false };
}
