/**
 * The files API (`/v1/vms/:ref/files…`, `/v1/vms/:ref/archive`): request and response schemas.
 * Raw bodies (file content, tar streams) are never JSON: see docs/processes.md ("Daemon API").
 */
import { z } from 'zod';
import { guestPathProblem } from './files-wire.js';

export const GuestPathSchema = z.string().superRefine((p, ctx) => {
  const problem = guestPathProblem(p);
  if (problem) ctx.addIssue({ code: 'custom', message: `guest path ${problem}` });
});

/** Permission bits: a number, or in a query string octal digits ("644", "0600"). */
export const FileModeSchema = z.number().int().min(0).max(0o7777);
export const OctalModeQuery = z
  .string()
  .regex(/^[0-7]{1,4}$/, 'expected octal permission digits such as 644')
  .transform((s) => Number.parseInt(s, 8));

export const GuestFileTypeSchema = z.enum(['file', 'dir', 'symlink', 'other']);

export const GuestStatSchema = z.object({
  type: GuestFileTypeSchema,
  mode: FileModeSchema,
  size: z.number().int().min(0),
  mtimeMs: z.number(),
  uid: z.number().int().min(0),
  gid: z.number().int().min(0),
  linkTarget: z.string().nullable(),
});
export type GuestFileStat = z.infer<typeof GuestStatSchema>;

export const GuestDirEntrySchema = z.object({
  name: z.string(),
  type: GuestFileTypeSchema,
  mode: FileModeSchema,
  size: z.number().int().min(0),
  mtimeMs: z.number(),
});
export const GuestDirListSchema = z.object({ entries: z.array(GuestDirEntrySchema), truncated: z.boolean() });
export type GuestDirList = z.infer<typeof GuestDirListSchema>;

export const MkdirRequestSchema = z.object({ path: GuestPathSchema, mode: FileModeSchema.optional(), parents: z.boolean().default(false) }).strict();
export type MkdirRequest = z.input<typeof MkdirRequestSchema>;
export const MoveRequestSchema = z.object({ from: GuestPathSchema, to: GuestPathSchema, overwrite: z.boolean().default(false) }).strict();
export type MoveRequest = z.input<typeof MoveRequestSchema>;

export const WriteFileResultSchema = z.object({ size: z.number().int().min(0) });
