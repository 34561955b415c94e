/**
 * The public TypeScript SDK: `import { Banger } from 'banger'` (docs/sdk.md). It is a layer over
 * the typed client (src/client); the daemon, the CLI and zod are never loaded by importing it
 * (test/unit/sdk-import.test.ts), and the types come from the API's zod schemas (type-only).
 */
export type { ErrorBody, ErrorCode } from '../api/errors.js';
export { BangerError } from '../api/errors.js';
export type {
  GuestPort,
  GuestPorts,
  Image,
  ImageWarmRequest,
  Kernel,
  Operation,
  OperationEvent,
  ReadyCheck,
  Snapshot,
  SnapshotManifest,
  VmCreateRequest,
} from '../api/schemas.js';
export type { WorkspaceBranchExport } from '../api/workspace-schemas.js';
export type { AgentSession, AgentStartOptions, AgentStartResult } from './agents.js';
export { Agents } from './agents.js';
export type { ConnectOptions, CreateVmOptions, Images, Kernels, Operations, Snapshots, Vms } from './banger.js';
export { Banger } from './banger.js';
export type { DownloadOptions, GuestDirList, GuestFileStat, WriteData } from './files.js';
export { Files } from './files.js';
export { OperationHandle } from './operation.js';
export type { AttachHandle, EventsOptions, Proc, ProcessEvent, WaitOptions } from './process.js';
export { ExecResult, Process } from './process.js';
export type { CallOptions } from './util.js';
export { asyncDispose } from './util.js';
export type { CommandOptions, DisposeAction, ExecOptions, ForkClone, ForkOptions, PauseOptions, SnapshotOptions, SpawnOptions, VmInfo } from './vm.js';
export { ForkResult, Vm } from './vm.js';
export type { ExportOptions, ExportResult, WorkspacePrepareRequest, WorkspacePrepareResult, WorkspaceStatus } from './workspace.js';
export { Workspace } from './workspace.js';
