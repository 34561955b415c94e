import { pipeline } from 'node:stream/promises';
import type { z } from 'zod';
import {
  WorkspaceBranchExportSchema,
  WorkspaceExportRequestSchema,
  WorkspacePlanRequestSchema,
  WorkspacePlanSchema,
  WorkspacePrepareRequestSchema,
  WorkspaceStatusSchema,
} from '../api/workspace-schemas.js';
import type { App } from './app.js';
import { OP_HEADER, type Route, sendJson } from './http.js';
import { operationRouteFor } from './route-helpers.js';
import type { WorkspaceService } from './services/workspaces.js';

/** The header that carries the commit a text export was computed from (C: the guest's work as one commit). */
export const EXPORT_COMMIT_HEADER = 'x-banger-commit';

/** Workspaces (docs/workspaces.md): plan, prepare (an operation), status, export. */
export function workspaceRoutes(app: Pick<App, 'ops'>, ws: WorkspaceService): Route[] {
  const operationRoute = operationRouteFor(app);
  return [
    {
      method: 'POST',
      path: '/v1/workspace/plan',
      body: WorkspacePlanRequestSchema,
      response: WorkspacePlanSchema,
      handler: ({ body }) => ws.plan(body as z.infer<typeof WorkspacePlanRequestSchema>),
    },
    operationRoute(
      '/v1/vms/:ref/workspace',
      'workspace.prepare',
      WorkspacePrepareRequestSchema,
      (_b, p) => p.ref,
      (b, ctx, p) => ws.prepare(p.ref as string, b, ctx),
    ),
    { method: 'GET', path: '/v1/vms/:ref/workspace', response: WorkspaceStatusSchema, handler: ({ params }) => ws.status(params.ref as string) },
    {
      method: 'POST',
      path: '/v1/vms/:ref/workspace/export',
      body: WorkspaceExportRequestSchema,
      stream: true,
      handler: async ({ params, body, res, opId }) => {
        const b = body as z.infer<typeof WorkspaceExportRequestSchema>;
        if (b.format === 'branch') {
          sendJson(res, 200, WorkspaceBranchExportSchema.parse(await ws.exportBranch(params.ref as string, b.name)), opId);
          return undefined;
        }
        // Errors up to here answer JSON; once bytes flow, a failure aborts the response (the client sees it cut short).
        const out = await ws.exportText(params.ref as string, b.format);
        res.writeHead(200, { 'content-type': 'text/x-diff', [OP_HEADER]: opId, [EXPORT_COMMIT_HEADER]: out.commit });
        try {
          await pipeline(out.stream, res, { end: false });
          await out.done;
          res.end();
        } catch (e) {
          res.destroy(e as Error);
        }
        return undefined;
      },
    },
  ];
}
