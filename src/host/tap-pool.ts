import { tapName, tapNameRe, validateOwnTapName } from './netplan.js';
import type { HostNetOps } from './privileged.js';

export interface TapPoolOptions {
  ops: HostNetOps;
  bridge: string;
  /** Idle TAPs kept ready so `vm start` does not wait for device creation. */
  size: number;
  /** Background refill failures are reported here (they never reject anything). */
  onError?: (err: unknown) => void;
}

/**
 * A warm pool of TAP devices on banger's bridge, named with the bridge's own prefix (bg0.<N> for
 * banger0), so daemons on different bridges never see, take or delete each other's TAPs. TAPs are never recycled: a released one is
 * deleted and the pool refilled with fresh devices, so a VM never inherits another VM's TAP state.
 */
export class TapPool {
  private readonly ops: HostNetOps;
  private readonly bridge: string;
  private readonly size: number;
  private readonly onError: (err: unknown) => void;
  private idle: string[] = [];
  /** Every name the pool believes exists or is being created or deleted; never handed out twice. */
  private readonly known = new Set<string>();
  private creating = 0;
  private refilling: Promise<void> | undefined;
  private refillAgain = false;

  constructor(options: TapPoolOptions) {
    if (!Number.isInteger(options.size) || options.size < 0) throw new RangeError(`invalid TAP pool size ${options.size}`);
    this.ops = options.ops;
    this.bridge = options.bridge;
    this.size = options.size;
    this.onError = options.onError ?? (() => {});
  }

  idleCount(): number {
    return this.idle.length;
  }

  /** Resolves once any background refill has finished (daemon shutdown, tests). */
  async settled(): Promise<void> {
    while (this.refilling) await this.refilling;
  }

  /**
   * Syncs with the host at daemon start: TAPs of running VMs (`inUse`) are left alone, up to
   * `size` other banger TAPs are kept idle, the rest deleted, and the pool topped up.
   */
  async reconcile(inUse: Set<string>): Promise<void> {
    await this.settled();
    const present = await this.ops.listTaps(this.bridge);
    this.known.clear();
    for (const n of inUse) this.known.add(n);
    for (const n of present) this.known.add(n);
    // Legacy bgtap<N> spares (from before TAP names were per bridge) are deleted, never pooled.
    const own = tapNameRe(this.bridge);
    const spare = present.filter((n) => !inUse.has(n));
    const keep = spare.filter((n) => own.test(n)).slice(0, this.size);
    for (const n of spare.filter((x) => !keep.includes(x))) {
      await this.ops.deleteTap(n, this.bridge);
      this.known.delete(n);
    }
    // createTap is idempotent: it re-attaches a kept TAP to the bridge and sets it up.
    for (const n of keep) await this.ops.createTap(n, this.bridge);
    this.idle = keep;
    while (this.idle.length < this.size) this.idle.push(await this.createFresh());
  }

  /** An idle TAP if one is ready, else a new one; the pool is topped up in the background. */
  async acquire(): Promise<string> {
    const name = this.idle.shift() ?? (await this.createFresh());
    this.scheduleRefill();
    return name;
  }

  /** Deletes the VM's TAP; rejects if it cannot be deleted (its name stays reserved then). */
  async release(name: string): Promise<void> {
    validateOwnTapName(name, this.bridge);
    this.idle = this.idle.filter((n) => n !== name);
    this.known.add(name);
    await this.ops.deleteTap(name, this.bridge);
    this.known.delete(name);
    this.scheduleRefill();
  }

  private nextName(): string {
    let n = 0;
    while (this.known.has(tapName(this.bridge, n))) n++;
    const name = tapName(this.bridge, n);
    this.known.add(name);
    return name;
  }

  private async createFresh(): Promise<string> {
    const name = this.nextName();
    this.creating++;
    try {
      await this.ops.createTap(name, this.bridge);
      return name;
    } catch (e) {
      // Best effort: a half-created device would otherwise hold the name until the next reconcile.
      await this.ops.deleteTap(name, this.bridge).then(
        () => this.known.delete(name),
        () => {},
      );
      throw e;
    } finally {
      this.creating--;
    }
  }

  private scheduleRefill(): void {
    if (this.refilling) {
      this.refillAgain = true;
      return;
    }
    this.refilling = this.refill()
      .catch((e) => {
        try {
          this.onError(e);
        } catch {
          /* a failing logger must not turn into an unhandled rejection */
        }
      })
      .finally(() => {
        this.refilling = undefined;
        if (this.refillAgain) {
          this.refillAgain = false;
          this.scheduleRefill();
        }
      });
  }

  private async refill(): Promise<void> {
    while (this.idle.length + this.creating < this.size) this.idle.push(await this.createFresh());
  }
}
