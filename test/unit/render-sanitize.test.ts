import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { formatError, sanitizeForTerminal, sanitizeInline } from '../../src/cli/render.js';

/** Every bidi mark/control and Unicode line break a hostile guest could use to reorder or split what the user reads. */
const BIDI_AND_BREAKS = [
  '\u061c', // ARABIC LETTER MARK
  '\u200e', // LEFT-TO-RIGHT MARK
  '\u200f', // RIGHT-TO-LEFT MARK
  '\u2028', // LINE SEPARATOR
  '\u2029', // PARAGRAPH SEPARATOR
  '\u202a',
  '\u202b',
  '\u202c',
  '\u202d',
  '\u202e', // embeddings and overrides
  '\u2066',
  '\u2067',
  '\u2068',
  '\u2069', // isolates
];

test('sanitizeForTerminal strips each bidi mark/control and the Unicode line/paragraph separators', () => {
  for (const c of BIDI_AND_BREAKS) {
    const cp = `U+${c.codePointAt(0)?.toString(16).toUpperCase().padStart(4, '0')}`;
    assert.equal(sanitizeForTerminal(`file${c}name.txt`), 'filename.txt', cp);
    assert.equal(sanitizeInline(`a${c}b`), 'ab', cp);
  }
});

test('a guest error that hides "exe" behind an RLM/override reaches the terminal in logical order, on one line', () => {
  const hostile = new BangerError('upstream_failed', `cannot read /root/\u200f\u202etxt.exe\u2069\u2028fake: second line\u2029\u061c`, {
    fix: `\u200eretry\u2028`,
  });
  const out = formatError(hostile);
  assert.equal(out, 'error: cannot read /root/txt.exefake: second line\nfix: retry\n');
});

test('ordinary text, right-to-left letters included, is kept', () => {
  const text = 'héllo ✓ 世界 😀 שלום مرحبا\tend\n';
  assert.equal(sanitizeForTerminal(text), text);
});
