/**
 * Small pieces every SDK resource shares: abort handling, the `await using` symbol, and a queue
 * that turns callbacks (operation and process event streams) into async iterables.
 */
import { BangerError } from '../api/errors.js';

/**
 * `Symbol.asyncDispose` where the runtime has it (Node ≥ 20.4 and 22+); otherwise the well-known
 * registry symbol Node uses for it, so `[asyncDispose]()` is the same method either way.
 */
export const asyncDispose: symbol = (Symbol as { asyncDispose?: symbol }).asyncDispose ?? Symbol.for('nodejs.asyncDispose');

/** Every SDK call takes these. */
export interface CallOptions {
  /** Aborting rejects the call with a `cancelled` BangerError (and stops what it started: see each method). */
  signal?: AbortSignal;
}

/** The error an aborted call rejects with: code `cancelled`, the signal's reason as its cause. */
export function aborted(signal: AbortSignal, what = 'the call', opId?: string): BangerError {
  return new BangerError('cancelled', `${what} was aborted`, { cause: signal.reason, ...(opId ? { opId } : {}) });
}

export function throwIfAborted(signal: AbortSignal | undefined, what?: string): void {
  if (signal?.aborted) throw aborted(signal, what);
}

/**
 * Rejects as soon as `signal` aborts. The request itself finishes on its own, within the client's
 * request timeout (short requests only: long waits are cut into slices or cancelled for real).
 */
export function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined, what?: string): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) {
    p.catch(() => {});
    return Promise.reject(aborted(signal, what));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      p.catch(() => {});
      reject(aborted(signal, what));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/** Resolves after ms, or rejects when signal aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(aborted(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Events recorded as they come; every iterator replays them from the first, then waits for more
 * until `end()`. Operation events are few (stages, progress, log lines), so keeping them is cheap
 * and an iterator started late misses nothing.
 */
export class EventLog<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private ended = false;
  private readonly waiters = new Set<() => void>();

  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.wakeAll();
  }

  end(): void {
    this.ended = true;
    this.wakeAll();
  }

  private wakeAll(): void {
    for (const w of this.waiters) w();
    this.waiters.clear();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    let i = 0;
    for (;;) {
      if (i < this.items.length) {
        yield this.items[i++] as T;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => this.waiters.add(resolve));
    }
  }
}

/**
 * A one-reader queue: items pushed by a callback, taken by `for await`. `fail` ends it with an
 * error (thrown to the reader after the items before it).
 */
export class EventQueue<T> {
  private readonly items: T[] = [];
  private done = false;
  private error: unknown;
  private wake: (() => void) | undefined;

  /**
   * @param maxPending events held for a consumer that is behind; one more fails the iteration
   *   (`payload_too_large`) and calls `onOverflow` (which stops the producer): memory stays bounded.
   */
  constructor(
    private readonly maxPending = 4096,
    private readonly onOverflow: () => void = () => {},
  ) {}

  push(item: T): void {
    if (this.done) return;
    if (this.items.length >= this.maxPending) {
      this.fail(
        new BangerError('payload_too_large', `the consumer fell ${this.maxPending} events behind`, {
          fix: 'consume the events faster, or read on later from the last offset seen (events({ from }))',
        }),
      );
      this.onOverflow();
      return;
    }
    this.items.push(item);
    this.wake?.();
  }
  end(): void {
    this.done = true;
    this.wake?.();
  }
  fail(e: unknown): void {
    if (this.done) return;
    this.error = e;
    this.done = true;
    this.wake?.();
  }

  async *drain(): AsyncGenerator<T> {
    for (;;) {
      const next = this.items.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.done) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}
