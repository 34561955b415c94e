import type { Operation, OperationEvent } from '../api/schemas.js';
import type { BangerClient } from '../client/client.js';
import { sanitizeInline } from './render.js';

/**
 * Renders an operation's events. On a TTY (stderr) the current stage is one live line with a
 * timer; otherwise each stage is one plain line, so logs and CI output stay readable.
 */
export class ProgressRenderer {
  private readonly tty: boolean;
  private current: { name: string; started: number; detail?: string } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private progressText = '';

  constructor(
    private readonly out: NodeJS.WriteStream = process.stderr,
    private readonly quiet = false,
  ) {
    this.tty = !!out.isTTY && !process.env.CI;
  }

  onEvent = (e: OperationEvent): void => {
    if (this.quiet) return;
    switch (e.type) {
      case 'snapshot':
        for (const line of e.operation.log ?? []) this.onEvent({ type: 'log', line });
        for (const s of e.operation.stages.slice(0, -1)) this.finishLine(s.name, s.detail, Date.parse(s.endedAt ?? s.startedAt) - Date.parse(s.startedAt));
        {
          const last = e.operation.stages.at(-1);
          if (last && e.operation.state === 'running') this.begin(last.name, last.detail, Date.parse(last.startedAt));
        }
        break;
      case 'stage':
        this.endCurrent();
        this.begin(e.stage.name, e.stage.detail, Date.parse(e.stage.startedAt));
        break;
      case 'progress': {
        const p = e.progress;
        this.progressText = p.total ? ` ${Math.round((100 * p.current) / p.total)}%` : ` ${p.current} ${p.unit}`;
        this.draw();
        break;
      }
      case 'log':
        this.clearLine();
        this.out.write(`  | ${sanitizeInline(e.line)}\n`);
        this.draw();
        break;
      case 'done':
        this.endCurrent(e.operation.state !== 'succeeded');
        break;
    }
  };

  private begin(rawName: string, rawDetail: string | undefined, started: number): void {
    // Stage names and details can carry catalog or guest text: one line, no escape sequences.
    const name = sanitizeInline(rawName);
    const detail = rawDetail === undefined ? undefined : sanitizeInline(rawDetail);
    this.current = detail === undefined ? { name, started } : { name, started, detail };
    this.progressText = '';
    if (this.tty) {
      this.timer = setInterval(() => this.draw(), 200);
      this.timer.unref();
      this.draw();
    } else {
      this.out.write(`- ${name}${detail ? ` (${detail})` : ''}\n`);
    }
  }

  private endCurrent(failed = false): void {
    if (!this.current) return;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const c = this.current;
    this.current = undefined;
    if (this.tty) {
      this.clearLine();
      this.finishLine(c.name, c.detail, Date.now() - c.started, failed);
    } else if (failed) {
      this.out.write(`! ${c.name} failed\n`);
    }
  }

  private finishLine(rawName: string, rawDetail: string | undefined, ms: number, failed = false): void {
    const name = sanitizeInline(rawName);
    const detail = rawDetail === undefined ? undefined : sanitizeInline(rawDetail);
    if (!this.tty) return void this.out.write(`- ${name}${detail ? ` (${detail})` : ''}\n`);
    this.out.write(`${failed ? '✗' : '✓'} ${name}${detail ? ` (${detail})` : ''} ${(ms / 1000).toFixed(1)}s\n`);
  }

  private draw(): void {
    if (!this.tty || !this.current) return;
    const s = ((Date.now() - this.current.started) / 1000).toFixed(1);
    this.clearLine();
    this.out.write(`… ${this.current.name}${this.current.detail ? ` (${this.current.detail})` : ''}${this.progressText} ${s}s`);
  }

  private clearLine(): void {
    if (this.tty) this.out.write('\r\x1b[2K');
  }
}

/**
 * Follows an operation to its end; Ctrl-C cancels it in the daemon (which cleans up its partial
 * work) instead of leaving it running behind a dead CLI.
 */
export async function followOperation<T>(client: BangerClient, accepted: { operation: Operation }, onEvent: (e: OperationEvent) => void): Promise<T> {
  const onSigint = () => {
    process.stderr.write('\ncancelling…\n');
    void client.cancelOperation(accepted.operation.id).catch(() => {});
  };
  process.once('SIGINT', onSigint);
  try {
    return await client.finish<T>(accepted, onEvent);
  } finally {
    process.off('SIGINT', onSigint);
  }
}
