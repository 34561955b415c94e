import type { Command } from 'commander';
import type { Operation, Snapshot, Vm, VmForkResult } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatBytes } from '../../util/duration.js';
import { intArg, memoryArg, sizeArg } from '../args.js';
import { followOperation, ProgressRenderer } from '../progress.js';
import { ago, printJson, printKeyValues, printTable, sanitizeForTerminal } from '../render.js';

const client = () => new BangerClient({ timeoutMs: 15 * 60_000 });

/** Follows an accepted operation with live stages on stderr (quiet with --json). */
async function follow<T>(c: BangerClient, accepted: { operation: Operation }, json: boolean): Promise<T> {
  const progress = new ProgressRenderer(process.stderr, json);
  return followOperation<T>(c, accepted, (e) => progress.onEvent(e));
}

function printSnapshot(s: Snapshot): void {
  const m = s.manifest;
  printKeyValues([
    ['name', s.name],
    ['id', s.id],
    ['purpose', s.purpose],
    ['source VM', s.sourceVm],
    ['image', s.imageName],
    ['memory', s.hasMemory ? `yes (${formatBytes(m.memoryBytes)} RAM, ${formatBytes(m.stateBytes)} device state)` : 'no (disks only: a start is a cold boot)'],
    ['size', `${m.vcpus} vcpus, ${m.memoryMib} MiB, disk ${formatBytes(m.diskSizeBytes)}`],
    ['on disk', formatBytes(s.sizeBytes)],
    ['vmm', `${m.vmm}: ${m.vmmVersion}`],
    ['kernel', m.kernelName],
    ['taken at', m.takenAt],
    ['dependents', s.dependents.length ? s.dependents.join(', ') : null],
    ['created', `${s.createdAt} (${ago(s.createdAt)})`],
  ]);
}

/** `vm pause|resume|snapshot|fork` (registered under `vm`). */
export function registerVmWarmCommands(vm: Command): void {
  vm.command('pause')
    .description('stop a VM’s vCPUs (the VMM stays), or with --to-disk save its state and RAM and free its memory')
    .argument('<vm>', 'VM name or id prefix')
    .option('--to-disk', 'save device state and RAM to disk; the VMM exits')
    .option('--json', 'print the VM as JSON')
    .action(async (ref: string, o: { toDisk?: boolean; json?: boolean }) => {
      const c = client();
      const v = await follow<Vm>(c, await c.pauseVm(ref, { toDisk: !!o.toDisk }), !!o.json);
      o.json ? printJson(v) : process.stdout.write(`${v.name} is ${v.state}\n`);
    });

  vm.command('resume')
    .description('continue a paused or suspended VM where it stopped')
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print the VM as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const c = client();
      const v = await follow<Vm>(c, await c.resumeVm(ref), !!o.json);
      o.json ? printJson(v) : process.stdout.write(`${v.name} is ${v.state}\n`);
    });

  vm.command('snapshot')
    .description('take an immutable snapshot of a VM (memory and disks; the VM keeps running)')
    .argument('<vm>', 'VM name or id prefix')
    .option('--name <name>', 'snapshot name (default: <vm>-<time>)')
    .option('--no-memory', 'disks only: freeze the guest filesystems and keep the disk layers (a start from it boots cold)')
    .option('--json', 'print the snapshot as JSON')
    .action(async (ref: string, o: { name?: string; memory: boolean; json?: boolean }) => {
      const c = client();
      const s = await follow<Snapshot>(c, await c.snapshotVm(ref, { ...(o.name ? { name: o.name } : {}), memory: o.memory }), !!o.json);
      o.json ? printJson(s) : process.stdout.write(`snapshot ${s.name} (${s.hasMemory ? 'memory + disks' : 'disks'}, ${formatBytes(s.sizeBytes)})\n`);
    });

  vm.command('fork')
    .description('clone a running VM N times (each clone gets its own identity; the source keeps running)')
    .argument('<vm>', 'VM name or id prefix')
    .option('--count <n>', 'how many clones', intArg('--count'), 1)
    .option('--name <name...>', 'clone names (as many as --count; default <vm>-fork-<k>)')
    .option('--json', 'print per-clone results as JSON')
    .action(async (ref: string, o: { count: number; name?: string[]; json?: boolean }) => {
      const c = client();
      const r = await follow<VmForkResult>(c, await c.forkVm(ref, { count: o.name?.length ?? o.count, ...(o.name ? { names: o.name } : {}) }), !!o.json);
      if (o.json) printJson(r);
      else {
        for (const x of r.results) {
          if (x.ok && x.vm) process.stdout.write(`${x.vm.name} is ${x.vm.state} (${x.vm.ip ?? 'no address'})\n`);
          else process.stderr.write(sanitizeForTerminal(`error: ${x.name}: ${x.error?.message}\n${x.error?.fix ? `fix: ${x.error.fix}\n` : ''}`));
        }
      }
      if (r.results.some((x) => !x.ok)) process.exitCode = 1;
    });
}

/** `image warm` (registered under `image`). */
export function registerImageWarmCommand(image: Command): void {
  image
    .command('warm')
    .description('keep a ready snapshot of an image for a size, so vm create/run of that size restores instead of booting')
    .argument('<image>', 'image name or id')
    .option('--vcpus <n>', 'virtual CPUs', intArg('--vcpus'))
    .option('--memory <size>', 'memory in MiB, or a size like 2G', memoryArg)
    .option('--disk-size <size>', 'work disk size, e.g. 8G', sizeArg)
    .option('--json', 'print the snapshot as JSON')
    .action(async (ref: string, o: { vcpus?: number; memory?: number; diskSize?: number; json?: boolean }) => {
      const c = client();
      const req = {
        ...(o.vcpus !== undefined ? { vcpus: o.vcpus } : {}),
        ...(o.memory !== undefined ? { memoryMib: o.memory } : {}),
        ...(o.diskSize !== undefined ? { diskSizeBytes: o.diskSize } : {}),
      };
      const s = await follow<Snapshot>(c, await c.warmImage(ref, req), !!o.json);
      o.json
        ? printJson(s)
        : process.stdout.write(
            `warm: ${s.name} (${s.manifest.vcpus} vcpus, ${s.manifest.memoryMib} MiB): vm create/run of ${s.imageName} at this size restores it\n`,
          );
    });
}

/** `snapshot list|show|delete`. */
export function registerSnapshotCommands(program: Command): void {
  const snap = program.command('snapshot').description('list, show and delete VM snapshots (take one with banger vm snapshot)');
  snap
    .command('list')
    .alias('ls')
    .description('list snapshots')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const list = await new BangerClient().snapshots();
      if (o.json) return printJson({ snapshots: list });
      printTable(
        ['NAME', 'ID', 'PURPOSE', 'SOURCE', 'IMAGE', 'MEMORY', 'SIZE', 'DEPENDENTS', 'CREATED'],
        list.map((s) => [
          s.name,
          s.id.slice(0, 12),
          s.purpose,
          s.sourceVm,
          s.imageName,
          s.hasMemory ? 'yes' : 'no',
          formatBytes(s.sizeBytes),
          s.dependents.length,
          ago(s.createdAt),
        ]),
      );
    });
  snap
    .command('show')
    .description('show one snapshot and its manifest')
    .argument('<snapshot>', 'snapshot name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const s = await new BangerClient().snapshot(ref);
      o.json ? printJson(s) : printSnapshot(s);
    });
  snap
    .command('delete')
    .alias('rm')
    .description('delete a snapshot (refused while VMs are layered on it, unless --force)')
    .argument('<snapshot...>', 'snapshot names or id prefixes')
    .option('--force', 'delete even with dependents (their disks keep the layers they need)')
    .action(async (refs: string[], o: { force?: boolean }) => {
      const c = new BangerClient();
      for (const ref of refs) {
        const r = await c.deleteSnapshot(ref, !!o.force);
        process.stdout.write(`deleted ${r.deleted}\n`);
      }
    });
}
