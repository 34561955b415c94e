/**
 * A long-running daemon operation (VM create, image or kernel pull, workspace prepare) as one
 * object: await it for the result, iterate `events` for its progress.
 *
 *   const op = banger.vms.create({ image: 'debian-bookworm' });
 *   for await (const ev of op.events) if (ev.type === 'stage') console.log(ev.stage.name);
 *   const vm = await op;
 */
import { BangerError } from '../api/errors.js';
import type { Operation, OperationEvent } from '../api/schemas.js';
import type { BangerClient } from '../client/client.js';
import { abortable, aborted, EventLog } from './util.js';

export type { Operation, OperationEvent };

export class OperationHandle<T> implements Promise<T> {
  /**
   * The operation's events (`snapshot`, `stage`, `progress`, `log`, `done`) from the first; the
   * iteration ends with the operation (awaiting the handle gives its result or its error).
   */
  readonly events: AsyncIterable<OperationEvent>;
  private readonly log = new EventLog<OperationEvent>();
  private readonly outcome: Promise<T>;
  private opId: string | undefined;
  private last: Operation | undefined;

  /**
   * `start` sends the request that creates the operation; `finish` turns its result into T.
   * Aborting `signal` cancels the operation in the daemon (which undoes what it did, as a failed
   * create does) and rejects with `cancelled`.
   */
  constructor(
    client: BangerClient,
    start: () => Promise<{ operation: Operation }>,
    finish: (result: unknown) => T | Promise<T>,
    signal?: AbortSignal,
    /** false: aborting only stops watching (an operation someone else started is not ours to cancel). */
    cancelOnAbort = true,
    /**
     * Undoes a result the caller will never see: a cancel that came after the work was done ends the
     * operation `cancelled` WITH its result (a VM, clones, a snapshot), which would otherwise be left
     * behind with no handle on it. Best effort; the rejection is `cancelled` either way.
     */
    discard?: (result: unknown) => Promise<unknown>,
  ) {
    this.events = this.log;
    this.outcome = this.run(client, start, finish, signal, cancelOnAbort, discard);
    // A caller that only iterates `events` must not crash the process with an unhandled rejection;
    // awaiting the handle still sees the error.
    this.outcome.catch(() => {});
  }

  private async run(
    client: BangerClient,
    start: () => Promise<{ operation: Operation }>,
    finish: (result: unknown) => T | Promise<T>,
    signal: AbortSignal | undefined,
    cancelOnAbort: boolean,
    discard: ((result: unknown) => Promise<unknown>) | undefined,
  ): Promise<T> {
    try {
      if (signal?.aborted) throw aborted(signal, 'the operation');
      const accepted = await start();
      const id = accepted.operation.id;
      this.opId = id;
      let op: Operation;
      if (!cancelOnAbort) {
        op = await abortable(
          client.watch(id, (e) => this.log.push(e)),
          signal,
          `following operation ${id}`,
        );
      } else {
        const onAbort = () => void client.cancelOperation(id).catch(() => {});
        if (signal?.aborted) onAbort();
        signal?.addEventListener('abort', onAbort, { once: true });
        try {
          op = await client.watch(id, (e) => this.log.push(e));
        } finally {
          signal?.removeEventListener('abort', onAbort);
        }
      }
      this.last = op;
      if (op.state === 'succeeded') return await finish(op.result);
      if (discard && op.result !== undefined) await discard(op.result).catch(() => {});
      if (signal?.aborted) throw aborted(signal, `operation ${id}`, id);
      if (op.error) {
        const e = BangerError.fromBody(op.error);
        e.opId ??= id;
        throw e;
      }
      throw new BangerError('cancelled', `operation ${id} ended ${op.state}`, { opId: id });
    } finally {
      this.log.end();
    }
  }

  /** The operation's id once the daemon accepted it (`banger operation show <id>`). */
  get id(): string | undefined {
    return this.opId;
  }

  /** The operation as it ended (stages, log), once it did. */
  get operation(): Operation | undefined {
    return this.last;
  }

  // biome-ignore lint/suspicious/noThenProperty: the handle is awaitable by design (`const vm = await op`).
  then<R1 = T, R2 = never>(onFulfilled?: ((value: T) => R1 | PromiseLike<R1>) | null, onRejected?: ((reason: unknown) => R2 | PromiseLike<R2>) | null) {
    return this.outcome.then(onFulfilled, onRejected);
  }

  finally(onFinally?: (() => void) | null): Promise<T> {
    return this.outcome.finally(onFinally);
  }

  readonly [Symbol.toStringTag] = 'OperationHandle';

  catch<R = never>(onRejected?: ((reason: unknown) => R | PromiseLike<R>) | null) {
    return this.outcome.catch(onRejected);
  }
}
