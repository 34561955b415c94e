import type { z } from 'zod';
import { AcceptedOperationSchema } from '../api/schemas.js';
import type { OpContext } from '../util/op-context.js';
import type { App } from './app.js';
import type { Route } from './http.js';

/** Builds POST routes that start an operation and answer 202 with it at once; the CLI then follows its events. */
export function operationRouteFor(app: Pick<App, 'ops'>) {
  return <S extends z.ZodType>(
    path: string,
    kind: string,
    body: S,
    target: (b: z.infer<S>, params: Record<string, string>) => string | undefined,
    run: (b: z.infer<S>, ctx: OpContext, params: Record<string, string>) => Promise<unknown>,
  ): Route => ({
    method: 'POST',
    path,
    body,
    response: AcceptedOperationSchema,
    status: 202,
    handler: ({ body: parsed, opId, params }) => {
      const b = parsed as z.infer<S>;
      return { operation: app.ops.start(kind, opId, target(b, params), (ctx) => run(b, ctx, params)) };
    },
  });
}
