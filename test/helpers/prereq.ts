import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';

/**
 * Prerequisites `npm test` provides: the host tools `scripts/install-deps.sh --test` installs and the
 * guest assets `scripts/guest-assets.sh` builds before the first test. scripts/test.sh sets
 * BANGER_TEST_STRICT=1, and there a missing one FAILS instead of skipping, so the suite never goes
 * green by quietly testing less. Run by hand (`node --test dist/test/…`), a test skips with the reason.
 *
 * What the suite cannot provide (root, a kernel feature, /dev/shm) stays a plain `t.skip(reason)`;
 * scripts/test.sh lists every skip with its reason at the end either way.
 */
export const STRICT = process.env.BANGER_TEST_STRICT === '1';

const HOW = 'npm test provides it: scripts/install-deps.sh --test installs the tools, scripts/guest-assets.sh builds the guest assets';

const reported = new Set<string>();

/**
 * A `skip` option for tests that need something `npm test` provides: false when `ok`, else the
 * reason. In strict mode a missing prerequisite also adds one failing test naming it (the tests
 * that need it still skip: they would only fail on the missing piece again).
 */
export function requires(ok: unknown, reason: string): false | string {
  if (ok) return false;
  if (STRICT && !reported.has(reason)) {
    reported.add(reason);
    test(`prerequisite missing: ${reason}`, () => {
      assert.fail(`${reason} (${HOW})`);
    });
  }
  return reason;
}

/**
 * The same inside a running test: true (and the test skipped) when the prerequisite is missing,
 * in strict mode an assertion failure instead. Use as `if (missing(t, ok, reason)) return;`.
 */
export function missing(t: TestContext, ok: unknown, reason: string): boolean {
  if (ok) return false;
  if (STRICT) assert.fail(`${reason} (${HOW})`);
  t.skip(reason);
  return true;
}
