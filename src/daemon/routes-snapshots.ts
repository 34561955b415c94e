import { z } from 'zod';
import {
  ImageWarmRequestSchema,
  SnapshotListSchema,
  SnapshotSchema,
  VmForkRequestSchema,
  VmPauseRequestSchema,
  VmSnapshotRequestSchema,
} from '../api/schemas.js';
import type { App } from './app.js';
import type { Route } from './http.js';
import { operationRouteFor } from './route-helpers.js';
import type { SnapshotService } from './services/snapshots.js';
import type { VmService } from './services/vms.js';

/** Warm start (docs/snapshots.md): snapshots, pause/resume, fork and the warm pool. Long ones are operations. */
export function snapshotRoutes(app: App, s: { vms: VmService; snapshots: SnapshotService }): Route[] {
  const operationRoute = operationRouteFor(app);
  return [
    { method: 'GET', path: '/v1/snapshots', response: SnapshotListSchema, handler: () => ({ snapshots: s.snapshots.list() }) },
    { method: 'GET', path: '/v1/snapshots/:ref', response: SnapshotSchema, handler: ({ params }) => s.snapshots.show(params.ref as string) },
    {
      method: 'DELETE',
      path: '/v1/snapshots/:ref',
      handler: async ({ params, query }) => ({ deleted: await s.snapshots.remove(params.ref as string, query.get('force') === 'true') }),
    },
    operationRoute(
      '/v1/vms/:ref/snapshots',
      'vm.snapshot',
      VmSnapshotRequestSchema,
      (_b, p) => p.ref,
      (b: z.infer<typeof VmSnapshotRequestSchema>, ctx, p) => s.snapshots.take(p.ref as string, b, ctx),
    ),
    operationRoute(
      '/v1/vms/:ref/pause',
      'vm.pause',
      VmPauseRequestSchema,
      (_b, p) => p.ref,
      (b: z.infer<typeof VmPauseRequestSchema>, ctx, p) => s.vms.pause(p.ref as string, b.toDisk, ctx),
    ),
    operationRoute(
      '/v1/vms/:ref/resume',
      'vm.resume',
      z.object({}).strict(),
      (_b, p) => p.ref,
      (_b, ctx, p) => s.vms.resume(p.ref as string, ctx),
    ),
    operationRoute(
      '/v1/vms/:ref/fork',
      'vm.fork',
      VmForkRequestSchema,
      (_b, p) => p.ref,
      (b: z.infer<typeof VmForkRequestSchema>, ctx, p) => s.snapshots.fork(p.ref as string, b, ctx),
    ),
    operationRoute(
      '/v1/images/:ref/warm',
      'image.warm',
      ImageWarmRequestSchema,
      (_b, p) => p.ref,
      (b: z.infer<typeof ImageWarmRequestSchema>, ctx, p) => s.snapshots.warm(p.ref as string, b, ctx),
    ),
  ];
}
