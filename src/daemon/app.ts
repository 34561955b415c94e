import type { Logger } from 'pino';
import type { DaemonStatus } from '../api/schemas.js';
import type { Config } from '../config/config.js';
import type { Layout } from '../config/layout.js';
import type { CommandRunner } from '../host/runner.js';
import type { Db } from '../store/db.js';
import { buildInfo } from '../util/build-info.js';
import type { Clock } from '../util/op-context.js';
import type { Router } from './http.js';
import { OperationRegistry } from './operations.js';

export interface AppDeps {
  layout: Layout;
  config: Config;
  db: Db;
  log: Logger;
  runner: CommandRunner;
  clock: Clock;
}

export type StatusExtras = Pick<DaemonStatus, 'vmm' | 'accel' | 'dnsListenAddr' | 'webListenAddr'>;

export interface AppHooks {
  /** What the services know for `daemon status` (VMM, accelerator, listeners). */
  status: () => StatusExtras;
  /** After every closer ran: the process's own teardown (socket, store, lock, exit). */
  onStopped?: (reason: string) => Promise<void>;
}

/**
 * The daemon's shared mechanisms (store, runner, logger, operation registry), its status and its
 * shutdown sequence. Built by the composition root (compose.ts); services get narrow dependencies,
 * never the App itself.
 */
export class App {
  readonly ops: OperationRegistry;
  readonly startedAt: Date;
  private readonly closers: Array<() => Promise<void> | void> = [];
  private shuttingDown: Promise<void> | undefined;

  constructor(
    readonly deps: AppDeps,
    private readonly hooks: AppHooks,
  ) {
    this.ops = new OperationRegistry(deps.clock);
    this.startedAt = deps.clock.now();
  }

  get log(): Logger {
    return this.deps.log;
  }

  addCloser(fn: () => Promise<void> | void): void {
    this.closers.push(fn);
  }

  status(): DaemonStatus {
    const b = buildInfo();
    const now = this.deps.clock.now();
    return {
      pid: process.pid,
      version: b.version,
      commit: b.commit,
      buildTime: b.buildTime,
      nodeVersion: process.version,
      socketPath: this.deps.layout.socketPath,
      logPath: this.deps.layout.logPath,
      stateDir: this.deps.layout.stateDir,
      startedAt: this.startedAt.toISOString(),
      uptimeSeconds: Math.max(0, (now.getTime() - this.startedAt.getTime()) / 1000),
      ...this.hooks.status(),
    };
  }

  /** Graceful: running operations are cancelled and awaited; VMs keep running (they outlive the daemon). */
  shutdown(reason: string): Promise<void> {
    this.shuttingDown ??= (async () => {
      this.log.info({ reason }, 'shutting down');
      await this.ops.drain(10_000);
      for (const close of this.closers.reverse()) {
        try {
          await close();
        } catch (e) {
          this.log.warn({ err: e }, 'error during shutdown');
        }
      }
      await this.hooks.onStopped?.(reason);
    })();
    return this.shuttingDown;
  }
}

export type RouteInstaller = (app: App, router: Router) => void;
