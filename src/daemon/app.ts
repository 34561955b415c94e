import type { Logger } from 'pino';
import type { DaemonStatus } from '../api/schemas.js';
import type { Config } from '../config/config.js';
import type { Layout } from '../config/layout.js';
import type { CommandRunner } from '../host/runner.js';
import type { Db } from '../store/db.js';
import { buildInfo } from '../util/build-info.js';
import type { Router } from './http.js';
import { OperationRegistry } from './operations.js';
import type { Clock } from '../util/op-context.js';

export interface AppDeps {
  layout: Layout;
  config: Config;
  db: Db;
  log: Logger;
  runner: CommandRunner;
  clock: Clock;
}

/**
 * The composition root: owns the shared mechanisms (store, runner, logger, operation registry)
 * and the services built on them. Services get narrow dependencies, never the App itself.
 */
export class App {
  readonly ops: OperationRegistry;
  readonly startedAt: Date;
  private readonly closers: Array<() => Promise<void> | void> = [];
  private shuttingDown: Promise<void> | undefined;
  onShutdown: ((reason: string) => Promise<void>) | undefined;
  statusExtras: () => Pick<DaemonStatus, 'vmm' | 'accel' | 'dnsListenAddr' | 'webListenAddr'> = () => ({
    vmm: this.deps.config.vmm,
    accel: null,
    dnsListenAddr: null,
    webListenAddr: null,
  });

  constructor(readonly deps: AppDeps) {
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
      ...this.statusExtras(),
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
      await this.onShutdown?.(reason);
    })();
    return this.shuttingDown;
  }
}

export type RouteInstaller = (app: App, router: Router) => void;
