import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError } from '../../api/errors.js';
import type { Image, ImageBuildRequest } from '../../api/schemas.js';
import type { Layout } from '../../config/layout.js';
import type { CommandRunner } from '../../host/runner.js';
import { boundedLines } from '../../util/bounded-lines.js';
import { newId } from '../../util/ids.js';
import type { OpContext } from '../../util/op-context.js';
import type { ImageService } from './images.js';
import type { VmService } from './vms.js';

const MAX_LINE_BYTES = 16 * 1024;
const MAX_LOG_BYTES = 64 * 1024 ** 2;

/**
 * Run in the build VM after the script: its /root is the work disk, which the new image does not
 * keep; the guest copies it into the root filesystem's own /root (seen through a bind mount of /,
 * which does not carry the work disk's mount). VMs of the new image seed their work disk from it.
 * The host never reads files out of a filesystem the guest wrote. (/root itself cannot be removed:
 * a directory something is mounted on is busy in every mount; only its contents are replaced.)
 */
const COMMIT_ROOT_SCRIPT = `set -e
m=$(mktemp -d /run/banger-commit.XXXXXX)
mount --bind / "$m"
trap 'umount "$m"; rmdir "$m"' EXIT
find "$m/root" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
cp -a /root/. "$m/root/"
rm -rf "$m/root/lost+found"
sync
`;

export interface ImageBuildDeps {
  images: ImageService;
  vms: VmService;
  layout: Layout;
  /** banger's ssh_config (Host <name>.vm blocks, managed key, known_hosts). */
  sshConfigPath: string;
  /** Runs ssh into the build VM. */
  runner: CommandRunner;
}

/**
 * `image build --from IMAGE --script FILE`: boots a transient VM from IMAGE, runs the script in it
 * over SSH (bash, stdin) with every line streamed into the operation log and a log file (both
 * bounded), has the guest copy its /root into its root filesystem, stops the VM cleanly, and saves
 * the root disk (flattened to raw ext4) as a new managed image. The VM is always deleted; a failed
 * script leaves its log and no image.
 */
export class ImageBuildService {
  constructor(private readonly d: ImageBuildDeps) {}

  async build(req: ImageBuildRequest, ctx: OpContext): Promise<Image> {
    this.d.images.assertNameFree(req.name);
    const vmName = `build-${newId().slice(0, 8)}`;
    const logDir = join(this.d.layout.logDir, 'builds');
    await mkdir(logDir, { recursive: true, mode: 0o700 });
    const logPath = join(logDir, `${req.name}-${new Date().toISOString().replace(/[:.]/g, '-')}.log`);
    ctx.log(`build log: ${logPath}`);
    const vm = await this.d.vms.create(
      { name: vmName, image: req.from, nat: req.nat, start: true, transient: true, ...(req.diskSizeBytes ? { diskSizeBytes: req.diskSizeBytes } : {}) },
      ctx,
    );
    const log = new BuildLog(logPath, ctx);
    try {
      ctx.stage('run script', `${vmName}.vm`);
      const code = await this.runInGuest(vmName, req.script, log, ctx.signal);
      if (code !== 0) {
        throw new BangerError('precondition_failed', `the build script exited with status ${code}; no image was saved`, { fix: `read the log: ${logPath}` });
      }
      ctx.stage('save /root', 'copied into the root filesystem by the guest');
      const saved = await this.runInGuest(vmName, COMMIT_ROOT_SCRIPT, log, ctx.signal);
      if (saved !== 0) {
        throw new BangerError('precondition_failed', `the guest could not copy /root into its root filesystem (status ${saved}); no image was saved`, {
          fix: `read the log (${logPath}); a /root larger than the free space of the image's root filesystem does not fit: keep big files elsewhere`,
        });
      }
      ctx.stage('stop VM', 'flush the guest’s disks');
      const stopped = await this.d.vms.bulk('stop', [vm.id]);
      if (!stopped.results[0]?.ok) throw new BangerError('vmm_failed', `could not stop build VM ${vmName}: ${stopped.results[0]?.error?.message}`);
      return await this.d.images.saveFromVm(req.name, req.from, this.d.vms.diskPaths(vm.id), ctx);
    } finally {
      await log.close();
      ctx.stage('delete build VM', vmName);
      await this.d.vms.bulk('delete', [vm.id]).catch(() => undefined);
    }
  }

  /** Runs a bash script in the VM over SSH; every output line goes to the build log. Resolves to its exit status. */
  private async runInGuest(vmName: string, script: string, log: BuildLog, signal: AbortSignal): Promise<number> {
    const child = this.d.runner.spawn(
      'ssh',
      // `--` before the host: nothing from outside is ever read as an ssh option.
      ['-F', this.d.sshConfigPath, '-o', 'ConnectTimeout=5', '-o', 'ConnectionAttempts=30', '-o', 'BatchMode=yes', '--', `${vmName}.vm`, 'bash -se'],
      { signal },
    );
    const lines = Promise.all([child.stdout, child.stderr].map((s) => boundedLines(s, { maxLineBytes: MAX_LINE_BYTES, onLine: (l, cut) => log.line(l, cut) })));
    lines.catch(() => undefined); // awaited below, once the exit is known (a spawn error comes first)
    child.stdin.end(script);
    const { code, signal: sig } = await child.done;
    await lines;
    return code ?? (sig ? 128 + 9 : 255);
  }
}

/**
 * The build's log file and the operation's log, both bounded: a guest can print without end, and
 * without a newline. Lines are cut at MAX_LINE_BYTES; past MAX_LOG_BYTES only the count of dropped
 * lines is kept.
 */
export class BuildLog {
  private readonly file: WriteStream;
  private written = 0;
  private dropped = 0;

  constructor(
    path: string,
    private readonly ctx: Pick<OpContext, 'log'>,
    private readonly maxBytes = MAX_LOG_BYTES,
  ) {
    this.file = createWriteStream(path, { mode: 0o600, flags: 'wx' });
    this.file.on('error', () => undefined);
  }

  line(text: string, cutBytes: number): void {
    const line = cutBytes ? `${text} [… ${cutBytes} more bytes of this line dropped]` : text;
    const bytes = Buffer.byteLength(line) + 1;
    if (this.written + bytes > this.maxBytes) {
      if (this.dropped++ === 0) this.emit(`[build output over ${this.maxBytes} bytes: further lines are dropped]`);
      return;
    }
    this.written += bytes;
    this.emit(line);
  }

  private emit(line: string): void {
    this.file.write(`${line}\n`);
    this.ctx.log(line);
  }

  close(): Promise<void> {
    if (this.dropped > 1) this.emit(`[${this.dropped} lines dropped]`);
    return new Promise((resolve) => this.file.end(() => resolve()));
  }
}
