/** A VM's git workspace (docs/workspaces.md): ship a host repository in, see the guest's work, take it back. */
import { BangerError } from '../api/errors.js';
import type {
  WorkspaceBranchExport,
  WorkspaceExportFormat,
  WorkspacePrepareRequest,
  WorkspacePrepareResult,
  WorkspaceStatus,
} from '../api/workspace-schemas.js';
import type { BangerClient } from '../client/client.js';
import { OperationHandle } from './operation.js';
import { abortable, type CallOptions, throwIfAborted } from './util.js';

export type { WorkspacePrepareRequest, WorkspacePrepareResult, WorkspaceStatus };

export interface ExportOptions extends CallOptions {
  /** `patch` (default: `git apply --binary`), `commits` (mbox for `git am`), or `branch` (a ref in the host repository). */
  format?: WorkspaceExportFormat;
  /** The branch export's ref is refs/banger/<vm>/<name> (default `wip`). */
  name?: string;
  /** patch/commits: stream the text here instead of returning it. */
  to?: NodeJS.WritableStream;
  /** Without `to`: the most bytes of text held in memory (default 64 MiB); more fails with `payload_too_large`. */
  maxBytes?: number;
}

export type ExportResult =
  /** `text` is set when no `to` stream was given. `commit` is the guest commit the text was computed from. */
  { format: 'patch' | 'commits'; commit: string; text?: string } | ({ format: 'branch' } & WorkspaceBranchExport);

/** What `export()` without `to` holds in memory at most. */
export const DEFAULT_MAX_EXPORT_BYTES = 64 * 1024 * 1024;

export class Workspace {
  constructor(
    private readonly client: BangerClient,
    private readonly vm: string,
  ) {}

  /**
   * Ships a host repository into the VM (default /root/repo; a relative `hostPath` is taken from
   * this program's working directory). An operation: await it, or iterate
   * its `events` for stages and progress. Aborting cancels it.
   */
  prepare(req: WorkspacePrepareRequest & CallOptions): OperationHandle<WorkspacePrepareResult> {
    const { signal, ...body } = req;
    // The daemon reads the repository, and its working directory is not this program's.
    const hostPath = process.getBuiltinModule('node:path').resolve(body.hostPath);
    return new OperationHandle(
      this.client,
      () => this.client.startWorkspacePrepare(this.vm, { ...body, hostPath }),
      (r) => r as WorkspacePrepareResult,
      signal,
    );
  }

  /** Base commit, the guest's commits and changes, and whether the host moved. */
  status(o: CallOptions = {}): Promise<WorkspaceStatus> {
    return abortable(this.client.workspace(this.vm), o.signal);
  }

  /** The guest's work since the base, as a patch, an mbox of commits, or a branch in the host repository. */
  async export(o: ExportOptions = {}): Promise<ExportResult> {
    throwIfAborted(o.signal, 'the export');
    const format = o.format ?? 'patch';
    const body = { format, ...(o.name ? { name: o.name } : {}) };
    if (format === 'branch') return abortable(this.client.exportWorkspace(this.vm, body), o.signal) as Promise<ExportResult>;
    if (o.to) return abortable(this.client.exportWorkspace(this.vm, body, o.to, o.signal), o.signal) as Promise<ExportResult>;
    // The text is the guest's (hostile: it can be any size): held only up to maxBytes.
    const max = o.maxBytes ?? DEFAULT_MAX_EXPORT_BYTES;
    const chunks: Buffer[] = [];
    let size = 0;
    const { Writable } = process.getBuiltinModule('node:stream');
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        size += chunk.length;
        if (size > max)
          return done(new BangerError('payload_too_large', `the ${format} is larger than ${max} bytes`, { fix: 'pass `to` (a stream) or a larger maxBytes' }));
        chunks.push(chunk);
        done();
      },
    });
    const r = (await abortable(this.client.exportWorkspace(this.vm, body, sink, o.signal), o.signal)) as { format: 'patch' | 'commits'; commit: string };
    return { ...r, text: Buffer.concat(chunks).toString('utf8') };
  }
}
