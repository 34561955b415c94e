import { BangerError } from '../api/errors.js';
import { DaemonStatusSchema, OperationListSchema, OperationSchema } from '../api/schemas.js';
import type { App } from './app.js';
import { openEventStream, type Route } from './http.js';

/** Daemon-wide routes: status, shutdown, operations and their event streams. */
export function coreRoutes(app: App): Route[] {
  return [
    {
      method: 'GET',
      path: '/v1/daemon',
      response: DaemonStatusSchema,
      handler: () => app.status(),
    },
    {
      method: 'POST',
      path: '/v1/daemon/shutdown',
      handler: () => {
        setImmediate(() => void app.shutdown('api request'));
        return { stopping: true };
      },
    },
    {
      method: 'GET',
      path: '/v1/operations',
      response: OperationListSchema,
      handler: () => ({ operations: app.ops.list() }),
    },
    {
      method: 'GET',
      path: '/v1/operations/:id',
      response: OperationSchema,
      handler: ({ params }) => {
        const op = app.ops.get(params.id as string);
        if (!op) throw new BangerError('not_found', `operation ${params.id} not found`, { fix: 'list them with `banger daemon ops`' });
        return op;
      },
    },
    {
      method: 'POST',
      path: '/v1/operations/:id/cancel',
      handler: ({ params }) => {
        const id = params.id as string;
        if (!app.ops.get(id)) throw new BangerError('not_found', `operation ${id} not found`);
        return { cancelled: app.ops.cancel(id) };
      },
    },
    {
      method: 'GET',
      path: '/v1/operations/:id/events',
      stream: true,
      handler: ({ params, res, opId, req }) => {
        const id = params.id as string;
        if (!app.ops.get(id)) throw new BangerError('not_found', `operation ${id} not found`);
        const stream = openEventStream(res, opId);
        let unsubscribe: (() => void) | undefined;
        const finish = () => {
          unsubscribe?.();
          stream.close();
        };
        req.on('close', () => unsubscribe?.());
        unsubscribe = app.ops.subscribe(id, (event) => {
          stream.send(event);
          if (event.type === 'done') setImmediate(finish);
        });
        return undefined;
      },
    },
  ];
}
