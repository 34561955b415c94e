import { z } from 'zod';

/**
 * The wire contract of workspaces (/v1/vms/:ref/workspace…, /v1/workspace/plan): a host git
 * repository shipped into a guest, its status, and the guest's work brought back (docs/workspaces.md).
 */

export const WorkspaceModeSchema = z.enum(['full', 'shallow']);
export type WorkspaceMode = z.infer<typeof WorkspaceModeSchema>;

/** What a VM records about the workspace prepared in it (null on the VM when none). */
export const WorkspaceRecordSchema = z.object({
  hostPath: z.string(),
  guestPath: z.string(),
  /** The commit the guest's work is measured from: the host's HEAD at prepare (or --from). */
  baseCommit: z.string(),
  mode: WorkspaceModeSchema,
  /** The branch prepare checked out in the guest (--branch), else null. */
  branch: z.string().nullable(),
  preparedAt: z.string(),
});
export type WorkspaceRecord = z.infer<typeof WorkspaceRecordSchema>;

/** Absolute: the daemon reads it, and its working directory is not the client's. */
const HostPath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => p.startsWith('/') && !p.includes('\0'), { message: 'an absolute host path' });
/** Absolute, normalised, not `/`: where the repository goes in the guest. */
export const GuestRepoPath = z
  .string()
  .max(1024)
  .regex(/^\/[^\0]+$/, 'an absolute guest path')
  .refine((p) => !p.split('/').some((c) => c === '.' || c === '..') && !p.includes('//') && !p.endsWith('/'), {
    message: 'a normalised absolute path (no ".", "..", "//" or trailing "/")',
  });

export const WorkspacePlanRequestSchema = z
  .object({ hostPath: HostPath, mode: WorkspaceModeSchema.default('full'), includeUntracked: z.boolean().default(false) })
  .strict();
export type WorkspacePlanRequest = z.input<typeof WorkspacePlanRequestSchema>;

export const WorkspacePlanEntrySchema = z.object({
  path: z.string(),
  /** tracked = as committed; modified/added/typechange = uncommitted (staged or not); untracked = only with includeUntracked. */
  kind: z.enum(['tracked', 'modified', 'added', 'typechange', 'untracked']),
  size: z.number(),
});
export type WorkspacePlanEntry = z.infer<typeof WorkspacePlanEntrySchema>;

export interface WorkspacePlanShape {
  /** The repository's top level (the path given may be inside it). */
  hostPath: string;
  head: string;
  /** The host's current branch, null when HEAD is detached. */
  branch: string | null;
  mode: WorkspaceMode;
  /** Files in the guest's working tree once prepared, and their bytes (submodules included). */
  files: number;
  bytes: number;
  /** Tracked files deleted in the host's working tree (deleted in the guest's too). */
  deleted: string[];
  untrackedSkipped: number;
  entries: WorkspacePlanEntry[];
  /** True when entries was cut (the counts are still whole). */
  entriesTruncated: boolean;
  submodules: Array<{ path: string; commit: string; initialized: boolean; plan: WorkspacePlanShape | null }>;
}
export const WorkspacePlanSchema: z.ZodType<WorkspacePlanShape> = z.lazy(() =>
  z.object({
    hostPath: z.string(),
    head: z.string(),
    branch: z.string().nullable(),
    mode: WorkspaceModeSchema,
    files: z.number(),
    bytes: z.number(),
    deleted: z.array(z.string()),
    untrackedSkipped: z.number(),
    entries: z.array(WorkspacePlanEntrySchema),
    entriesTruncated: z.boolean(),
    submodules: z.array(z.object({ path: z.string(), commit: z.string(), initialized: z.boolean(), plan: WorkspacePlanSchema.nullable() })),
  }),
);
export type WorkspacePlan = WorkspacePlanShape;

/** A git branch name given on the command line (checked again with `git check-ref-format --branch`). */
const BranchName = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._/-]*$/, 'letters, digits, ".", "_", "-" and "/", starting with a letter or digit');

export const WorkspacePrepareRequestSchema = z
  .object({
    hostPath: HostPath,
    guestPath: GuestRepoPath.default('/root/repo'),
    mode: WorkspaceModeSchema.default('full'),
    includeUntracked: z.boolean().default(false),
    branch: BranchName.optional(),
    /** A revision of the host repository the new branch starts from (default HEAD). */
    from: z
      .string()
      .min(1)
      .max(256)
      .refine((r) => !r.startsWith('-'), { message: 'a revision, not an option' })
      .optional(),
  })
  .strict()
  .refine((r) => r.from === undefined || r.branch !== undefined, { message: '--from goes with --branch' });
export type WorkspacePrepareRequest = z.input<typeof WorkspacePrepareRequestSchema>;

export const WorkspacePrepareResultSchema = z.object({
  workspace: WorkspaceRecordSchema,
  untrackedSkipped: z.number(),
  files: z.number(),
  bytes: z.number(),
});
export type WorkspacePrepareResult = z.infer<typeof WorkspacePrepareResultSchema>;

export const WorkspaceStatusSchema = z.object({
  workspace: WorkspaceRecordSchema,
  /** The guest's HEAD commit. */
  guestHead: z.string(),
  /** Commits in the guest since the base (reachable from HEAD, not from base). */
  guestCommits: z.number(),
  /** Uncommitted changes in the guest (porcelain status letters and path), at most 1000. */
  changes: z.array(z.object({ status: z.string(), path: z.string() })),
  changesTotal: z.number(),
  /** The host repository's HEAD now (null when it cannot be read), and whether it moved since prepare. */
  hostHead: z.string().nullable(),
  hostMoved: z.boolean(),
  /** Host commits since the base (null when the base is not an ancestor of the host's HEAD or unreadable). */
  hostCommitsSinceBase: z.number().nullable(),
});
export type WorkspaceStatus = z.infer<typeof WorkspaceStatusSchema>;

export const WorkspaceExportFormatSchema = z.enum(['patch', 'commits', 'branch']);
export type WorkspaceExportFormat = z.infer<typeof WorkspaceExportFormatSchema>;

/** The last component of `refs/banger/<vm>/<name>` (checked again with `git check-ref-format`). */
export const ExportRefName = z
  .string()
  .min(1)
  .max(100)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" and "-", starting with a letter or digit')
  .refine((n) => !n.includes('..') && !n.endsWith('.lock') && !n.endsWith('.'), { message: 'not a valid git ref name' });

export const WorkspaceExportRequestSchema = z.object({ format: WorkspaceExportFormatSchema.default('patch'), name: ExportRefName.default('wip') }).strict();
export type WorkspaceExportRequest = z.input<typeof WorkspaceExportRequestSchema>;

export const WorkspaceBranchExportSchema = z.object({
  ref: z.string(),
  commit: z.string(),
  baseCommit: z.string(),
});
export type WorkspaceBranchExport = z.infer<typeof WorkspaceBranchExportSchema>;
