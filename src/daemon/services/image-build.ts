import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BangerError } from '../../api/errors.js';
import type { Image, ImageBuildRequest } from '../../api/schemas.js';
import type { Layout } from '../../config/layout.js';
import { newId } from '../../util/ids.js';
import type { OpContext } from '../operations.js';
import type { ImageService } from './images.js';
import type { VmService } from './vms.js';

export interface ImageBuildDeps {
  images: ImageService;
  vms: VmService;
  layout: Layout;
  /** banger's ssh_config (Host <name>.vm blocks, managed key, known_hosts). */
  sshConfigPath: string;
}

/**
 * `image build --from IMAGE --script FILE`: boots a transient VM from IMAGE, runs the script in it
 * over SSH (bash, stdin) with every line streamed into the operation log and a log file, stops the
 * VM cleanly, and saves its disks as a new managed image (root disk flattened to raw ext4, the work
 * disk as the work seed). The VM is always deleted; a failed script leaves its log and no image.
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
    const vm = await this.d.vms.create({ name: vmName, image: req.from, nat: req.nat, start: true, ...(req.diskSizeBytes ? { diskSizeBytes: req.diskSizeBytes } : {}) }, ctx);
    try {
      ctx.stage('run script', `${vmName}.vm`);
      const code = await this.runScript(vmName, req.script, logPath, ctx);
      if (code !== 0) {
        throw new BangerError('precondition_failed', `the build script exited with status ${code}; no image was saved`, { fix: `read the log: ${logPath}` });
      }
      ctx.stage('stop VM', 'flush the guest’s disks');
      const stopped = await this.d.vms.bulk('stop', [vm.id]);
      if (!stopped.results[0]?.ok) throw new BangerError('vmm_failed', `could not stop build VM ${vmName}: ${stopped.results[0]?.error?.message}`);
      return await this.d.images.saveFromVm(req.name, req.from, this.d.vms.diskPaths(vm.id), ctx);
    } finally {
      ctx.stage('delete build VM', vmName);
      await this.d.vms.bulk('delete', [vm.id]).catch(() => undefined);
    }
  }

  private runScript(vmName: string, script: string, logPath: string, ctx: OpContext): Promise<number> {
    return new Promise((resolve, reject) => {
      const log = createWriteStream(logPath, { mode: 0o600 });
      const child = spawn(
        'ssh',
        ['-F', this.d.sshConfigPath, '-o', 'ConnectTimeout=5', '-o', 'ConnectionAttempts=30', '-o', 'BatchMode=yes', `${vmName}.vm`, '--', 'bash -se'],
        { stdio: ['pipe', 'pipe', 'pipe'], signal: ctx.signal },
      );
      for (const stream of [child.stdout, child.stderr]) {
        createInterface({ input: stream }).on('line', (line) => {
          log.write(`${line}\n`);
          ctx.log(line);
        });
      }
      child.stdin.end(script);
      child.on('error', (e: NodeJS.ErrnoException) => {
        log.end();
        reject(e.code === 'ENOENT' ? new BangerError('missing_dependency', 'ssh is not installed', { fix: 'apt-get install openssh-client' }) : e);
      });
      child.on('close', (code, signal) => {
        log.end(() => resolve(code ?? (signal ? 128 + 9 : 255)));
      });
    });
  }
}
