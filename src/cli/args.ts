import type { Command } from 'commander';
import { BangerError } from '../api/errors.js';
import { parseDuration, parseSize } from '../util/duration.js';
import { InvalidArgumentError } from './commander.js';

/** Option parsers: a malformed value is a usage error (exit 2) with the expected form. */
export function intArg(name: string) {
  return (v: string): number => {
    if (!/^-?\d+$/.test(v.trim())) throw new InvalidArgumentError(`${name} must be an integer, got "${v}"`);
    return Number(v);
  };
}

/** "1024" is MiB; "2G", "512M" are explicit. */
export function memoryArg(v: string): number {
  if (/^\d+$/.test(v.trim())) return Number(v);
  const bytes = parseSize(v);
  if (bytes === undefined) throw new InvalidArgumentError(`--memory takes MiB or a size like "2G", got "${v}"`);
  return Math.floor(bytes / 1024 / 1024);
}

export function sizeArg(v: string): number {
  const bytes = parseSize(v);
  if (bytes === undefined) throw new InvalidArgumentError(`expected a size like "8G" or "512M", got "${v}"`);
  return bytes;
}

export function onOff(v: string): boolean {
  if (v === 'on' || v === 'true') return true;
  if (v === 'off' || v === 'false') return false;
  throw new InvalidArgumentError(`expected "on" or "off", got "${v}"`);
}

/** The flags that describe a new VM (`vm create`, `vm run`), as parsed by {@link addVmSpecOptions}. */
export interface VmSpecOptions {
  name?: string;
  image?: string;
  vcpus?: number;
  memory?: number;
  diskSize?: number;
  nat?: boolean;
  /** Every --wait-for, in order (see {@link waitForArg}). */
  waitFor?: WaitFor[];
  /** --wait-timeout, in ms. */
  waitTimeout?: number;
  fromSnapshot?: string;
  cold?: boolean;
}

export function addVmSpecOptions(cmd: Command, imageHelp: string): Command {
  return cmd
    .option('--name <name>', 'VM name (a DNS label; becomes <name>.vm)')
    .option('--image <image>', imageHelp)
    .option('--vcpus <n>', 'virtual CPUs', intArg('--vcpus'))
    .option('--memory <size>', 'memory in MiB, or a size like 2G', memoryArg)
    .option('--disk-size <size>', 'work disk size (mounted at /root), e.g. 8G', sizeArg)
    .option('--nat', 'let the VM reach beyond the host (outbound NAT)')
    .option(
      '--wait-for <what>',
      'ready when "ssh" works (default, where the image has sshd) or when the "agent" answers; then when "port:N" listens in the guest, or when a shell command run in the guest succeeds ("cmd:CMD" for one named ssh, agent or port:…); repeatable, checked in order',
      waitForArg,
    )
    .option(
      '--wait-timeout <duration>',
      'give up waiting for the port and command checks after this long, e.g. 90s, 15m (default 10m; the VM is kept running)',
      waitTimeoutArg,
    )
    .option('--from-snapshot <snapshot>', 'start from a snapshot (its disks, and its memory when it has one) instead of an image')
    .option('--cold', 'boot cold even when the image has a warm snapshot (banger image warm)');
}

/** One --wait-for: the base wait (ssh or agent), or a readiness check of the user's. */
export type WaitFor = { kind: 'ssh' } | { kind: 'agent' } | { kind: 'port'; port: number } | { kind: 'command'; command: string };

/** The daemon's bounds (api/schemas.ts ReadyCheckSchema, readyTimeoutMs), checked here for a usage error. */
const MAX_READY_CHECKS = 8;
const MAX_COMMAND_CHARS = 4096;
const MAX_WAIT_TIMEOUT_MS = 24 * 3_600_000;

/**
 * `ssh`, `agent`, `port:N`, `cmd:CMD`, or anything else: a shell command. Repeatable: each value is
 * appended to the previous ones.
 */
export function waitForArg(v: string, previous: WaitFor[] = []): WaitFor[] {
  return [...previous, parseWaitFor(v)];
}

function parseWaitFor(v: string): WaitFor {
  if (v === 'ssh' || v === 'agent') return { kind: v };
  if (v.startsWith('port:')) {
    const n = v.slice('port:'.length);
    if (!/^\d{1,5}$/.test(n) || Number(n) < 1 || Number(n) > 65535)
      throw new InvalidArgumentError(`port:N takes a TCP port from 1 to 65535, got "${v}" (a command named like this: cmd:${v})`);
    return { kind: 'port', port: Number(n) };
  }
  const command = v.startsWith('cmd:') ? v.slice('cmd:'.length) : v;
  if (command.trim() === '') throw new InvalidArgumentError(`expected ssh, agent, port:N or a command, got "${v}"`);
  if (command.length > MAX_COMMAND_CHARS) throw new InvalidArgumentError(`a --wait-for command has at most ${MAX_COMMAND_CHARS} characters`);
  return { kind: 'command', command };
}

function waitTimeoutArg(v: string): number {
  const ms = parseDuration(v);
  if (ms === undefined || ms < 1000 || ms > MAX_WAIT_TIMEOUT_MS)
    throw new InvalidArgumentError(`--wait-timeout takes a duration from 1s to 24h, like "90s" or "15m", got "${v}"`);
  return ms;
}

/**
 * The request fields of the --wait-for values: the base wait (`ssh` wins over `agent`: it needs the
 * agent too) and the checks in order. Throws a usage error when they are more than the daemon takes.
 */
export function readiness(o: Pick<VmSpecOptions, 'waitFor' | 'waitTimeout'>) {
  const all = o.waitFor ?? [];
  const base: 'ssh' | 'agent' | undefined = all.some((w) => w.kind === 'ssh') ? 'ssh' : all.some((w) => w.kind === 'agent') ? 'agent' : undefined;
  const checks = all.flatMap((w) => (w.kind === 'port' || w.kind === 'command' ? [w] : []));
  if (checks.length > MAX_READY_CHECKS) {
    throw new BangerError('bad_request', `${checks.length} --wait-for checks: at most ${MAX_READY_CHECKS}`, {
      fix: 'combine commands with &&',
      details: 'usage',
    });
  }
  if (o.waitTimeout !== undefined && checks.length === 0) {
    throw new BangerError('bad_request', '--wait-timeout bounds the port and command checks of --wait-for, and none was given', {
      fix: 'add --wait-for port:N or --wait-for CMD, or drop --wait-timeout',
      details: 'usage',
    });
  }
  return {
    ...(base !== undefined ? { waitFor: base } : {}),
    ...(checks.length ? { readyWhen: checks } : {}),
    ...(o.waitTimeout !== undefined ? { readyTimeoutMs: o.waitTimeout } : {}),
  };
}

/** The create request for those flags (absent flags stay absent: the daemon applies its defaults). */
export function vmCreateRequest(o: VmSpecOptions, start: boolean) {
  const ready = readiness(o);
  if (!start && (ready.readyWhen || ready.readyTimeoutMs !== undefined)) {
    throw new BangerError('bad_request', 'a VM created with --no-start is not waited for: --wait-for port:N or a command needs it started', {
      fix: 'drop --no-start, or the port and command checks',
      details: 'usage',
    });
  }
  return {
    ...(o.name !== undefined ? { name: o.name } : {}),
    ...(o.image !== undefined ? { image: o.image } : {}),
    ...(o.vcpus !== undefined ? { vcpus: o.vcpus } : {}),
    ...(o.memory !== undefined ? { memoryMib: o.memory } : {}),
    ...(o.diskSize !== undefined ? { diskSizeBytes: o.diskSize } : {}),
    nat: !!o.nat,
    start,
    ...ready,
    ...(o.fromSnapshot !== undefined ? { fromSnapshot: o.fromSnapshot } : {}),
    ...(o.cold ? { cold: true } : {}),
  };
}
