import type { Command } from 'commander';
import { parseSize } from '../util/duration.js';
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
  waitFor?: 'ssh' | 'agent';
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
    .option('--wait-for <what>', 'ready when "ssh" works (default, where the image has sshd) or when the "agent" answers', waitForArg)
    .option('--from-snapshot <snapshot>', 'start from a snapshot (its disks, and its memory when it has one) instead of an image')
    .option('--cold', 'boot cold even when the image has a warm snapshot (banger image warm)');
}

function waitForArg(v: string): 'ssh' | 'agent' {
  if (v === 'ssh' || v === 'agent') return v;
  throw new InvalidArgumentError(`expected "ssh" or "agent", got "${v}"`);
}

/** The create request for those flags (absent flags stay absent: the daemon applies its defaults). */
export function vmCreateRequest(o: VmSpecOptions, start: boolean) {
  return {
    ...(o.name !== undefined ? { name: o.name } : {}),
    ...(o.image !== undefined ? { image: o.image } : {}),
    ...(o.vcpus !== undefined ? { vcpus: o.vcpus } : {}),
    ...(o.memory !== undefined ? { memoryMib: o.memory } : {}),
    ...(o.diskSize !== undefined ? { diskSizeBytes: o.diskSize } : {}),
    nat: !!o.nat,
    start,
    ...(o.waitFor !== undefined ? { waitFor: o.waitFor } : {}),
    ...(o.fromSnapshot !== undefined ? { fromSnapshot: o.fromSnapshot } : {}),
    ...(o.cold ? { cold: true } : {}),
  };
}
