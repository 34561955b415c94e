/** Pure text operations of the file tools: exact-string edits and line ranges. */
import { BangerError } from '../api/errors.js';

/** An edited file is at most this long (checked before it is built). */
export const MAX_EDITED_CHARS = 16 * 1024 * 1024;

/** Occurrences of `needle` in `text` (non-overlapping, left to right), up to `limit`. */
export function countOccurrences(text: string, needle: string, limit = Number.POSITIVE_INFINITY): number {
  let n = 0;
  for (let at = text.indexOf(needle); at !== -1 && n < limit; at = text.indexOf(needle, at + needle.length)) n++;
  return n;
}

/**
 * `content` with `oldString` replaced by `newString`: exactly one occurrence must exist, or, with
 * replaceAll, at least one (all are replaced). Refusals say why, so the caller can widen the old
 * string with surrounding lines. Replacement is literal (no `$&` patterns).
 */
export function applyEdit(content: string, oldString: string, newString: string, replaceAll = false): { content: string; replacements: number } {
  if (oldString.length === 0)
    throw new BangerError('bad_request', 'old_string is empty', { fix: 'give the exact text to replace (file_write writes a whole file)' });
  if (oldString === newString) throw new BangerError('bad_request', 'old_string and new_string are the same', { fix: 'give the new text' });
  const count = countOccurrences(content, oldString);
  if (count === 0) {
    throw new BangerError('not_found', 'old_string does not occur in the file', {
      fix: 'read the file (file_read) and copy the exact text, whitespace and indentation included',
    });
  }
  if (count > 1 && !replaceAll) {
    throw new BangerError('conflict', `old_string occurs ${count} times`, {
      fix: 'add surrounding lines so it is unique, or set replace_all to replace every occurrence',
    });
  }
  const size = content.length + count * (newString.length - oldString.length);
  if (size > MAX_EDITED_CHARS) {
    throw new BangerError('payload_too_large', `the edit would make the file ${size} characters long (at most ${MAX_EDITED_CHARS})`, {
      fix: 'replace fewer occurrences, or write the file with file_write',
    });
  }
  return { content: content.split(oldString).join(newString), replacements: count };
}

export interface LineWindow {
  /** The selected lines joined with \n (no trailing newline added). */
  text: string;
  /** First line returned (1-based) and how many; total lines of the file. */
  from: number;
  count: number;
  totalLines: number;
}

/** Lines `from` (1-based) .. `from + limit - 1` of text; `from` past the end gives no lines. */
export function selectLines(text: string, from = 1, limit = Number.POSITIVE_INFINITY): LineWindow {
  const lines = text.split('\n');
  // A final newline ends the last line; it does not start another one.
  if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
  const totalLines = text.length === 0 ? 0 : lines.length;
  const start = Math.max(1, Math.floor(from));
  const picked = lines.slice(start - 1, Number.isFinite(limit) ? start - 1 + Math.max(0, Math.floor(limit)) : undefined);
  return { text: totalLines === 0 ? '' : picked.join('\n'), from: start, count: totalLines === 0 ? 0 : picked.length, totalLines };
}
