/** Plain HTTP against the web UI's port (loopback only), keeping the raw path, headers and trailers. */
import { request } from 'node:http';

export interface WebReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  trailers: Record<string, string | undefined>;
  body: Buffer;
  text: string;
  json(): unknown;
}

/** Page keys of the sessions webLogin opened, by cookie: a request with that cookie sends its key as the UI's page does. */
const pageKeys = new Map<string, string>();
export const pageKeyOf = (cookie: string): string | undefined => pageKeys.get(cookie);

export function webRequest(
  base: string,
  method: string,
  path: string,
  /** noKey: send the cookie alone (as a page of another origin would). */
  opts: { headers?: Record<string, string>; body?: Buffer | string; noKey?: boolean } = {},
): Promise<WebReply> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...opts.headers };
    const key = opts.headers?.cookie ? pageKeys.get(opts.headers.cookie) : undefined;
    if (key && !opts.noKey && headers['x-banger-key'] === undefined) headers['x-banger-key'] = key;
    if (opts.body !== undefined && headers['content-length'] === undefined) headers['content-length'] = Buffer.byteLength(opts.body);
    const req = request({ host: u.hostname, port: u.port, method, path, headers, setHost: !('host' in headers) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        const text = body.toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, trailers: res.trailers, body, text, json: () => JSON.parse(text) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Redeems a `/auth?token=` link: the session cookie (name=value) and the session's CSRF token. */
export async function webLogin(authUrl: string): Promise<{ cookie: string; csrf: string; key: string; setCookie: string }> {
  const u = new URL(authUrl);
  const base = `${u.protocol}//${u.host}`;
  const r = await webRequest(base, 'GET', `${u.pathname}${u.search}`);
  if (r.status !== 200) throw new Error(`login failed: HTTP ${r.status} ${r.text}`);
  const setCookie = String((r.headers['set-cookie'] as string[] | undefined)?.[0]);
  const cookie = setCookie.split(';')[0] as string;
  const key = pageKeyIn(r.text);
  if (!key) throw new Error(`the login page names no page key: ${r.text}`);
  pageKeys.set(cookie, key);
  const s = await webRequest(base, 'GET', '/api/session', { headers: { cookie } });
  return { cookie, setCookie, key, csrf: (s.json() as { csrf: string }).csrf };
}

/** The page key in the /auth page (it navigates on to `/#key=K`). */
export const pageKeyIn = (html: string): string | undefined => /content="0;url=\/#key=([0-9a-f]{64})"/.exec(html)?.[1];

/** The WebSocket subprotocols the UI's terminal offers: its protocol and its page key. */
export const wsProtocols = (key: string): string[] => ['banger', `banger.key.${key}`];
