import { EventEmitter } from 'node:events';
import { BangerError, toBangerError } from '../api/errors.js';
import type { Operation, OperationEvent } from '../api/schemas.js';
import { type Clock, type OpContext, systemClock } from '../util/op-context.js';

const MAX_LOG_LINES = 200;

interface Entry {
  op: Operation;
  controller: AbortController;
  events: EventEmitter;
  done: Promise<void>;
}

/**
 * Every long job (create, pull, build) runs as an operation: ordered stages with timestamps,
 * progress, a result or error, cancellation, and an event stream the API exposes as SSE.
 * Finished operations are kept (bounded) so `banger daemon ops` can show recent history.
 */
export class OperationRegistry {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly clock: Clock = systemClock,
    private readonly keepFinished = 200,
  ) {}

  start<T>(kind: string, id: string, target: string | undefined, run: (ctx: OpContext) => Promise<T>): Operation {
    let opId = id;
    for (let n = 2; this.entries.has(opId); n++) opId = `${id}.${n}`;
    const controller = new AbortController();
    const events = new EventEmitter();
    events.setMaxListeners(0);
    const op: Operation = { id: opId, kind, state: 'running', stages: [], createdAt: this.iso() };
    if (target !== undefined) op.target = target;
    const emit = (e: OperationEvent) => events.emit('event', e);
    const closeStage = () => {
      const last = op.stages[op.stages.length - 1];
      if (last && !last.endedAt) last.endedAt = this.iso();
    };
    const ctx: OpContext = {
      id: opId,
      signal: controller.signal,
      stage: (name, detail) => {
        closeStage();
        const stage = detail === undefined ? { name, startedAt: this.iso() } : { name, startedAt: this.iso(), detail };
        op.stages.push(stage);
        emit({ type: 'stage', stage: { ...stage } });
      },
      progress: (current, total, unit) => {
        op.progress = total === undefined ? { current, unit } : { current, total, unit };
        emit({ type: 'progress', progress: { ...op.progress } });
      },
      log: (line) => {
        op.log ??= [];
        op.log.push(line);
        if (op.log.length > MAX_LOG_LINES) op.log.splice(0, op.log.length - MAX_LOG_LINES);
        emit({ type: 'log', line });
      },
      setTarget: (target) => {
        op.target = target;
      },
      checkCancelled: () => {
        if (controller.signal.aborted) throw new BangerError('cancelled', `operation ${opId} was cancelled`);
      },
    };
    const entry: Entry = { op, controller, events, done: Promise.resolve() };
    this.entries.set(opId, entry);
    entry.done = (async () => {
      try {
        const result = await run(ctx);
        if (result !== undefined) op.result = result;
        op.state = controller.signal.aborted ? 'cancelled' : 'succeeded';
      } catch (e) {
        const err = toBangerError(e);
        err.opId ??= opId;
        op.error = err.toBody();
        op.state = controller.signal.aborted || err.code === 'cancelled' ? 'cancelled' : 'failed';
      } finally {
        closeStage();
        op.endedAt = this.iso();
        emit({ type: 'done', operation: structuredClone(op) });
        events.removeAllListeners();
        this.trim();
      }
    })();
    return structuredClone(op);
  }

  get(id: string): Operation | undefined {
    const e = this.entries.get(id);
    return e ? structuredClone(e.op) : undefined;
  }

  list(): Operation[] {
    return [...this.entries.values()].map((e) => structuredClone(e.op));
  }

  cancel(id: string): boolean {
    const e = this.entries.get(id);
    if (e?.op.state !== 'running') return false;
    e.controller.abort(new BangerError('cancelled', `operation ${id} was cancelled`));
    return true;
  }

  /** Resolves when the operation ends; the returned snapshot holds its result or error. */
  async wait(id: string): Promise<Operation> {
    const e = this.entries.get(id);
    if (!e) throw new BangerError('not_found', `operation ${id} not found`);
    await e.done;
    return structuredClone(e.op);
  }

  /**
   * Delivers a snapshot first, then live events. Returns an unsubscribe function.
   * For a finished operation the listener gets the snapshot and 'done' at once.
   */
  subscribe(id: string, listener: (e: OperationEvent) => void): (() => void) | undefined {
    const e = this.entries.get(id);
    if (!e) return undefined;
    listener({ type: 'snapshot', operation: structuredClone(e.op) });
    if (e.op.state !== 'running') {
      listener({ type: 'done', operation: structuredClone(e.op) });
      return () => {};
    }
    e.events.on('event', listener);
    return () => e.events.off('event', listener);
  }

  /** Aborts every running operation and waits for them to settle (daemon shutdown). */
  async drain(timeoutMs: number): Promise<void> {
    const running = [...this.entries.values()].filter((e) => e.op.state === 'running');
    for (const e of running) e.controller.abort(new BangerError('cancelled', 'the daemon is shutting down'));
    await Promise.race([Promise.allSettled(running.map((e) => e.done)), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }

  private trim(): void {
    const finished = [...this.entries.values()].filter((e) => e.op.state !== 'running').sort((a, b) => (a.op.endedAt ?? '').localeCompare(b.op.endedAt ?? ''));
    for (const e of finished.slice(0, Math.max(0, finished.length - this.keepFinished))) this.entries.delete(e.op.id);
  }

  private iso(): string {
    return this.clock.now().toISOString();
  }
}
