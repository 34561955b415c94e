import { BangerError } from '../api/errors.js';
import { WebTokenRequestSchema, WebTokenSchema } from '../api/schemas.js';
import type { Route } from './http.js';
import type { WebServer } from './web/server.js';

/**
 * `POST /v1/web/token`: a one-use, two-minute link into the web UI. On the Unix socket only, so
 * only who may use the daemon gets one (docs/web.md, "Authentication").
 */
export function webRoutes(web: Pick<WebServer, 'issueToken'> | undefined): Route[] {
  return [
    {
      method: 'POST',
      path: '/v1/web/token',
      body: WebTokenRequestSchema,
      response: WebTokenSchema,
      handler: () => {
        if (!web) {
          throw new BangerError('unavailable', 'the web UI is not serving', {
            fix: 'set web_listen_addr (e.g. "127.0.0.1:42070") in the config and run `banger daemon restart`; see `banger daemon logs` if it is set',
          });
        }
        return web.issueToken();
      },
    },
  ];
}
