import { z } from 'zod';
import { KernelSchema, ResourceName } from './schemas.js';

const sha256 = z
  .string()
  .regex(/^[0-9a-fA-F]{64}$/, 'expected a SHA-256 (64 hex digits)')
  .transform((s) => s.toLowerCase());
const httpUrl = z
  .string()
  .url()
  .refine((u) => /^(https?|file):/i.test(u), { message: 'expected an http(s):// or file:// URL' });

/** Resolved at pull time through a Debian package index (meta package → versioned linux-image-*). */
export const DebianIndexSourceSchema = z
  .object({
    kind: z.literal('debian-index'),
    suite: z.string().regex(/^[a-z0-9][a-z0-9.-]*$/, 'expected a suite like "bookworm"'),
    component: z.string().regex(/^[a-z0-9][a-z0-9./-]*$/, 'expected a component like "main"'),
    package: z.string().regex(/^[a-z0-9][a-z0-9.+-]+$/, 'expected a Debian package name'),
    /** Overrides the debian_mirror config key for this entry. */
    mirror: z.string().url().optional(),
    /** Overrides the debian_keyring config key for this entry. */
    keyring: z.string().min(1).optional(),
  })
  .strict();

/** A direct download: a tarball (any layout `kernel import` accepts, kernel.json included) or a .deb. */
export const ArchiveSourceSchema = z
  .object({
    kind: z.literal('archive'),
    url: httpUrl,
    sha256,
    format: z.enum(['tar.zst', 'tar.gz', 'tar.xz', 'tar', 'deb']).optional(),
  })
  .strict();

export const KernelCatalogSourceSchema = z.discriminatedUnion('kind', [DebianIndexSourceSchema, ArchiveSourceSchema]);

export const KernelCatalogEntrySchema = z
  .object({
    name: ResourceName,
    distro: z.string().min(1),
    arch: z.literal('x86_64'),
    /** A version, or "latest" when the index decides at pull time. */
    version: z.string().min(1),
    description: z.string().default(''),
    /** Approximate download size in bytes, when known. */
    size: z.number().int().nonnegative().optional(),
    source: KernelCatalogSourceSchema,
  })
  .strict();
export type KernelCatalogEntry = z.infer<typeof KernelCatalogEntrySchema>;

export const KernelCatalogItemSchema = z.object({
  name: z.string(),
  distro: z.string(),
  arch: z.string(),
  version: z.string(),
  description: z.string(),
  size: z.number().optional(),
  source: KernelCatalogSourceSchema,
  /** "builtin" or the catalog file/URL the entry comes from. */
  origin: z.string(),
  state: z.enum(['pulled', 'available']),
  /** The local kernel of that name, when pulled (or imported under that name). */
  kernel: KernelSchema.nullable(),
});
export type KernelCatalogItem = z.infer<typeof KernelCatalogItemSchema>;

export const KernelCatalogListSchema = z.object({ kernels: z.array(KernelCatalogItemSchema) });

export const KernelPullRequestSchema = z.object({ name: ResourceName, force: z.boolean().default(false) }).strict();
export type KernelPullRequest = z.infer<typeof KernelPullRequestSchema>;
