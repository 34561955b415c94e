import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkReleaseValidity, releaseField } from '../../src/kernels/release.js';

/** Issue #9, 13: a signed Release past its Valid-Until is refused (apt's rule); none at all is fine. */

const NOW = new Date('2026-06-01T00:00:00Z');
const release = (extra: string) => `Origin: Debian\nSuite: stable\nDate: Sat, 01 Jan 2026 00:00:00 UTC\n${extra}SHA256:\n 00 1 main/x\n`;

test('Valid-Until in the past is refused, naming the date', () => {
  assert.throws(
    () => checkReleaseValidity(release('Valid-Until: Sat, 07 Feb 2026 08:00:00 UTC\n'), 'http://127.0.0.1/debian/dists/sid/InRelease', NOW),
    (e: Error & { code?: string; fix?: string }) =>
      e.code === 'rejected_content' &&
      /InRelease expired: its Valid-Until is Sat, 07 Feb 2026 08:00:00 GMT/.test(e.message) &&
      /up-to-date mirror/.test(e.fix ?? ''),
  );
});

test('Valid-Until in the future, or absent (bookworm), passes', () => {
  checkReleaseValidity(release('Valid-Until: Mon, 01 Jun 2026 00:00:01 UTC\n'), 'x', NOW);
  checkReleaseValidity(release(''), 'x', NOW);
});

test('an unreadable Valid-Until is refused; only a top-level field counts', () => {
  assert.throws(() => checkReleaseValidity(release('Valid-Until: someday\n'), 'x', NOW), /Valid-Until that is not a date/);
  // An indented line (a continuation, e.g. inside the SHA256 list) is not the field.
  assert.equal(releaseField(`Origin: x\nSHA256:\n Valid-Until: Thu, 01 Jan 1970 00:00:00 UTC\n`, 'Valid-Until'), undefined);
});
