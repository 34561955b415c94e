/**
 * A deadline as an AbortSignal. Unlike AbortSignal.timeout its timer is ref'd (a caller waiting on
 * a stalled guest keeps the process alive until the deadline fires) and `clear()` drops it as soon
 * as the work is done (no timer left pending for minutes).
 */
export function deadline(ms: number): { signal: AbortSignal; clear(): void } {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new DOMException(`deadline of ${ms} ms passed`, 'TimeoutError')), ms);
  return { signal: ac.signal, clear: () => clearTimeout(timer) };
}
