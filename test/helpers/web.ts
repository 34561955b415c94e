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

export function webRequest(
  base: string,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: Buffer | string } = {},
): Promise<WebReply> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...opts.headers };
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
export async function webLogin(authUrl: string): Promise<{ cookie: string; csrf: string; setCookie: string }> {
  const u = new URL(authUrl);
  const base = `${u.protocol}//${u.host}`;
  const r = await webRequest(base, 'GET', `${u.pathname}${u.search}`);
  if (r.status !== 303) throw new Error(`login failed: HTTP ${r.status} ${r.text}`);
  const setCookie = String((r.headers['set-cookie'] as string[] | undefined)?.[0]);
  const cookie = setCookie.split(';')[0] as string;
  const s = await webRequest(base, 'GET', '/api/session', { headers: { cookie } });
  return { cookie, setCookie, csrf: (s.json() as { csrf: string }).csrf };
}
