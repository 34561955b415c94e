import { KernelCatalogListSchema, KernelPullRequestSchema } from '../api/kernel-schemas.js';
import { KernelImportRequestSchema, KernelListSchema, KernelSchema } from '../api/schemas.js';
import type { App } from './app.js';
import type { Route } from './http.js';
import { operationRouteFor } from './route-helpers.js';
import { type KernelService, toKernel } from './services/kernels.js';

export function kernelRoutes(app: App, kernels: KernelService, removeKernel: (ref: string, force: boolean) => Promise<string>): Route[] {
  const operationRoute = operationRouteFor(app);
  return [
    { method: 'GET', path: '/v1/kernels', response: KernelListSchema, handler: () => ({ kernels: kernels.list() }) },
    { method: 'GET', path: '/v1/kernels/:ref', response: KernelSchema, handler: ({ params }) => toKernel(kernels.row(params.ref as string)) },
    { method: 'GET', path: '/v1/kernel-catalog', response: KernelCatalogListSchema, handler: async () => ({ kernels: await kernels.catalog() }) },
    operationRoute(
      '/v1/kernels',
      'kernel.import',
      KernelImportRequestSchema,
      (b) => b.name,
      (b, ctx) => kernels.import(b.name, b.from, ctx),
    ),
    operationRoute(
      '/v1/kernels/pull',
      'kernel.pull',
      KernelPullRequestSchema,
      (b) => b.name,
      (b, ctx) => kernels.pull(b.name, { force: b.force }, ctx),
    ),
    {
      method: 'DELETE',
      path: '/v1/kernels/:ref',
      handler: async ({ params, query }) => ({ deleted: await removeKernel(params.ref as string, query.get('force') === 'true') }),
    },
  ];
}
