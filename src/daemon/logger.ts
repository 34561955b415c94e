import { closeSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import pino, { type Logger } from 'pino';

/**
 * pino writes JSON lines through this destination: synchronous (logs survive a crash) and
 * size-capped by rotating to `<file>.1` so a long-lived daemon never fills the disk.
 */
export class RotatingFile {
  private fd: number;
  private size: number;

  constructor(
    private readonly path: string,
    private readonly maxBytes = 10 * 1024 * 1024,
  ) {
    this.fd = openSync(path, 'a', 0o600);
    this.size = statSync(path).size;
  }

  write(chunk: string): boolean {
    const n = Buffer.byteLength(chunk);
    if (this.size + n > this.maxBytes && this.size > 0) this.rotate();
    writeSync(this.fd, chunk);
    this.size += n;
    return true;
  }

  private rotate(): void {
    closeSync(this.fd);
    renameSync(this.path, `${this.path}.1`);
    this.fd = openSync(this.path, 'a', 0o600);
    this.size = 0;
  }
}

export function createLogger(path: string, level: string): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, new RotatingFile(path));
}
