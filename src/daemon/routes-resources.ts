import { z } from 'zod';
import {
  CachePruneReportSchema,
  GuestHealthSchema,
  GuestPortsSchema,
  ImageBuildRequestSchema,
  ImageCatalogListSchema,
  ImageListSchema,
  ImagePullRequestSchema,
  ImageRegisterRequestSchema,
  ImageSchema,
  VmBulkRequestSchema,
  VmBulkResultSchema,
  VmCreateRequestSchema,
  VmListSchema,
  VmSchema,
  VmSetRequestSchema,
  VmStatsSchema,
} from '../api/schemas.js';
import type { App } from './app.js';
import { OP_HEADER, type Route } from './http.js';
import { streamLog } from './log-stream.js';
import { operationRouteFor } from './route-helpers.js';
import type { ImageBuildService } from './services/image-build.js';
import type { ImageService } from './services/images.js';
import type { KernelService } from './services/kernels.js';
import type { VmService } from './services/vms.js';

export interface Services {
  builds: ImageBuildService;
  kernels: KernelService;
  images: ImageService;
  vms: VmService;
}

/**
 * Tails a guest-fed log over HTTP: the last `lines` lines, then (with follow) new bytes until the
 * client leaves or `endedOf` says the writer is done, at the pace the client reads (./log-stream.ts).
 */
function tailRoute(pathOf: (ref: string) => string, endedOf?: (ref: string) => () => Promise<boolean>): Route['handler'] {
  return ({ params, query, res, req, opId }) => {
    const path = pathOf(params.ref as string);
    const lines = Math.min(100_000, Math.max(0, Number(query.get('lines') ?? '200') || 0));
    const follow = query.get('follow') === 'true';
    const ended = follow && endedOf ? endedOf(params.ref as string) : undefined;
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', [OP_HEADER]: opId });
    void streamLog(path, { lines, follow, ...(ended ? { ended } : {}) }, req, res);
    return undefined;
  };
}

export function resourceRoutes(app: App, s: Services): Route[] {
  const operationRoute = operationRouteFor(app);
  return [
    // ---- images
    { method: 'GET', path: '/v1/images', response: ImageListSchema, handler: () => ({ images: s.images.list() }) },
    { method: 'GET', path: '/v1/images/:ref', response: ImageSchema, handler: ({ params }) => s.images.toImage(s.images.row(params.ref as string)) },
    operationRoute(
      '/v1/images',
      'image.register',
      ImageRegisterRequestSchema,
      (b) => b.name,
      (b, ctx) => s.images.register(b, ctx),
    ),
    operationRoute(
      '/v1/images/build',
      'image.build',
      ImageBuildRequestSchema,
      (b) => b.name,
      (b, ctx) => s.builds.build(b, ctx),
    ),
    operationRoute(
      '/v1/images/pull',
      'image.pull',
      ImagePullRequestSchema,
      (b) => b.name ?? b.ref,
      (b, ctx) => s.images.pull(b, ctx),
    ),
    operationRoute(
      '/v1/images/:ref/promote',
      'image.promote',
      z.object({}).strict(),
      (_b, p) => p.ref,
      (_b, ctx, p) => s.images.promote(p.ref as string, ctx),
    ),
    { method: 'GET', path: '/v1/image-catalog', response: ImageCatalogListSchema, handler: () => s.images.catalogList() },
    {
      method: 'POST',
      path: '/v1/image-cache/prune',
      body: z.object({ dryRun: z.boolean().default(false) }).strict(),
      response: CachePruneReportSchema,
      handler: ({ body }) => s.images.pruneCache((body as { dryRun: boolean }).dryRun),
    },
    { method: 'DELETE', path: '/v1/images/:ref', handler: async ({ params }) => ({ deleted: await s.images.remove(params.ref as string) }) },
    // ---- VMs
    { method: 'GET', path: '/v1/vms', response: VmListSchema, handler: () => ({ vms: s.vms.list() }) },
    operationRoute(
      '/v1/vms',
      'vm.create',
      VmCreateRequestSchema,
      (b) => b.name,
      (b, ctx) => s.vms.create(b, ctx),
    ),
    {
      method: 'POST',
      path: '/v1/vms/actions',
      body: VmBulkRequestSchema,
      response: VmBulkResultSchema,
      handler: ({ body }) => {
        const b = body as z.infer<typeof VmBulkRequestSchema>;
        return s.vms.bulk(b.action, b.refs);
      },
    },
    {
      method: 'POST',
      path: '/v1/vms/prune',
      body: z.object({ dryRun: z.boolean().default(false) }).strict(),
      handler: async ({ body }) => ({ pruned: await s.vms.prune((body as { dryRun: boolean }).dryRun) }),
    },
    { method: 'GET', path: '/v1/vms/:ref', response: VmSchema, handler: ({ params }) => s.vms.show(params.ref as string) },
    {
      method: 'PATCH',
      path: '/v1/vms/:ref',
      body: VmSetRequestSchema,
      response: VmSchema,
      handler: ({ params, body }) => s.vms.set(params.ref as string, body as z.infer<typeof VmSetRequestSchema>),
    },
    { method: 'GET', path: '/v1/vms/:ref/health', response: GuestHealthSchema, handler: ({ params }) => s.vms.health(params.ref as string) },
    { method: 'GET', path: '/v1/vms/:ref/ports', response: GuestPortsSchema, handler: ({ params }) => s.vms.ports(params.ref as string) },
    { method: 'GET', path: '/v1/vms/:ref/stats', response: VmStatsSchema, handler: ({ params }) => s.vms.stats(params.ref as string) },
    {
      method: 'GET',
      path: '/v1/vms/:ref/logs',
      stream: true,
      handler: tailRoute(
        (ref) => s.vms.serialLogPath(ref),
        (ref) => s.vms.bootEnded(ref),
      ),
    },
  ];
}
