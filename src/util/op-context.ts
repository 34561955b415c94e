/**
 * What services and pipeline stages see of time and of the operation they run in. The registry
 * that implements OpContext lives in daemon/operations.ts; leaves (images/, oci/) need only these types.
 */
export interface Clock {
  now(): Date;
}
export const systemClock: Clock = { now: () => new Date() };

/** What a running operation can report. Services receive this, never the registry. */
export interface OpContext {
  readonly id: string;
  readonly signal: AbortSignal;
  stage(name: string, detail?: string): void;
  progress(current: number, total: number | undefined, unit: string): void;
  log(line: string): void;
  /** Names what the operation works on once it is known (e.g. a VM's generated name). */
  setTarget(target: string): void;
  /** Throws BangerError('cancelled') when the operation was cancelled. */
  checkCancelled(): void;
}
