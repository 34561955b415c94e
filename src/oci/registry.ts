import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { BangerError } from '../api/errors.js';
import { basicAuth, type Credentials, dockerCredentials, parseChallenge } from './auth.js';
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from './manifest.js';
import { formatReference, type ImageReference, isLoopbackRegistry } from './reference.js';

export type Fetch = typeof fetch;

export interface RegistryClientOptions {
  fetch?: Fetch;
  credentials?: (registry: string) => Promise<Credentials | undefined>;
  signal?: AbortSignal;
}

export interface FetchedManifest {
  bytes: Buffer;
  contentType: string | undefined;
  digest: string;
}

const USER_AGENT = 'banger (+https://github.com/banger)';

/**
 * Speaks the OCI distribution API for one repository: anonymous first, then the bearer-token flow
 * (Docker Hub and most registries) or basic auth when the registry asks for it, with credentials
 * from ~/.docker/config.json. HTTPS always, except plain HTTP to loopback registries.
 */
export class RegistryClient {
  private readonly fetch: Fetch;
  private readonly credentials: (registry: string) => Promise<Credentials | undefined>;
  private authorization: string | undefined;
  readonly base: string;

  constructor(
    readonly ref: ImageReference,
    private readonly opts: RegistryClientOptions = {},
  ) {
    this.fetch = opts.fetch ?? fetch;
    this.credentials = opts.credentials ?? ((r) => dockerCredentials(r));
    this.base = `${isLoopbackRegistry(ref.registry) ? 'http' : 'https'}://${ref.registry}`;
  }

  private async send(path: string, headers: Record<string, string>, method = 'GET'): Promise<Response> {
    const url = `${this.base}/v2/${this.ref.repository}/${path}`;
    const go = () =>
      this.fetch(url, {
        method,
        headers: { 'user-agent': USER_AGENT, ...headers, ...(this.authorization ? { authorization: this.authorization } : {}) },
        redirect: 'follow',
        signal: this.opts.signal,
      }).catch((e: unknown) => {
        throw this.unreachable(e);
      });
    let res = await go();
    if (res.status === 401 && (await this.authenticate(res))) res = await go();
    return res;
  }

  private unreachable(e: unknown): BangerError {
    if (e instanceof BangerError) return e;
    const cause = (e as { cause?: { code?: string; message?: string } })?.cause;
    const detail = cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : String(e));
    return new BangerError('upstream_failed', `cannot reach registry ${this.ref.registry}: ${detail}`, {
      fix: isLoopbackRegistry(this.ref.registry)
        ? 'is the registry running on that port?'
        : 'check the host is reachable over HTTPS from this machine (banger uses plain HTTP only for loopback registries)',
    });
  }

  /** Answers a 401 challenge; false when there is nothing more to try. */
  private async authenticate(res: Response): Promise<boolean> {
    await res.body?.cancel();
    // Credentials already sent and refused: asking again would not change the answer.
    if (this.authorization) return false;
    const challenge = parseChallenge(res.headers.get('www-authenticate'));
    const creds = await this.credentials(this.ref.registry);
    if (challenge?.scheme === 'basic') {
      if (!creds) return false;
      this.authorization = basicAuth(creds);
      return true;
    }
    if (challenge?.scheme !== 'bearer' || !challenge.params.realm) return false;
    const realm = new URL(challenge.params.realm);
    if (realm.protocol !== 'https:' && !(realm.protocol === 'http:' && isLoopbackRegistry(realm.host))) {
      throw new BangerError('upstream_failed', `registry ${this.ref.registry} sends its token requests to ${realm.origin} over plain HTTP`, {
        fix: 'banger only fetches tokens over HTTPS (or from loopback); use a registry with a TLS token service',
      });
    }
    if (challenge.params.service) realm.searchParams.set('service', challenge.params.service);
    realm.searchParams.set('scope', challenge.params.scope ?? `repository:${this.ref.repository}:pull`);
    const tokenRes = await this.fetch(realm, {
      headers: { 'user-agent': USER_AGENT, ...(creds ? { authorization: basicAuth(creds) } : {}) },
      signal: this.opts.signal,
    }).catch((e: unknown) => {
      throw this.unreachable(e);
    });
    const text = await readLimited(tokenRes, 64 * 1024, 'token response');
    if (!tokenRes.ok) {
      throw new BangerError(
        'upstream_failed',
        `the token service of ${this.ref.registry} refused ${creds ? `user ${creds.username}` : 'anonymous access'} (HTTP ${tokenRes.status})`,
        {
          fix: creds
            ? 'check the credentials in ~/.docker/config.json'
            : 'log in first (docker login writes ~/.docker/config.json) if the repository is private',
        },
      );
    }
    let token: unknown;
    try {
      const j = JSON.parse(text.toString('utf8')) as { token?: unknown; access_token?: unknown };
      token = j.token ?? j.access_token;
    } catch {
      /* handled below */
    }
    if (typeof token !== 'string' || !token || token.length > 16 * 1024) {
      throw new BangerError('upstream_failed', `the token service of ${this.ref.registry} answered without a usable token`);
    }
    this.authorization = `Bearer ${token}`;
    return true;
  }

  private failure(res: Response, what: string): BangerError {
    const who = formatReference(this.ref);
    if (res.status === 401 || res.status === 403) {
      return new BangerError('upstream_failed', `access to ${who} was denied (HTTP ${res.status})`, {
        fix: 'check the name; for a private repository put credentials in ~/.docker/config.json (docker login)',
      });
    }
    if (res.status === 404) return new BangerError('not_found', `${what} of ${who} not found in the registry`, { fix: 'check the repository name and tag' });
    if (res.status === 429)
      return new BangerError('upstream_failed', `registry ${this.ref.registry} is rate limiting pulls (HTTP 429)`, {
        fix: 'wait and retry, or log in to raise the limit',
      });
    return new BangerError('upstream_failed', `registry ${this.ref.registry} answered HTTP ${res.status} for ${what} of ${who}`);
  }

  /** Fetches a manifest or index by tag or digest; by digest, the bytes must hash to it. */
  async manifest(reference: string): Promise<FetchedManifest> {
    const res = await this.send(`manifests/${reference}`, { accept: MANIFEST_ACCEPT });
    if (!res.ok) {
      await res.body?.cancel();
      throw this.failure(res, `manifest ${reference}`);
    }
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES, `manifest ${reference} of ${formatReference(this.ref)}`);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (reference.startsWith('sha256:') && digest !== reference) {
      throw new BangerError('rejected_content', `manifest digest mismatch: asked for ${reference}, got content hashing to ${digest}`, {
        fix: 'the registry served tampered or corrupt content',
      });
    }
    return { bytes, contentType: res.headers.get('content-type') ?? undefined, digest };
  }

  /** The body of a blob as a Node stream; verification is the caller's (BlobCache.ensure). */
  async blob(digest: string): Promise<Readable> {
    const res = await this.send(`blobs/${digest}`, {});
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw this.failure(res, `blob ${digest}`);
    }
    return Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
  }
}

/** Reads a whole (small) body, refusing one larger than `max` without buffering it. */
export async function readLimited(res: Response, max: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length') ?? Number.NaN);
  if (declared > max) {
    await res.body?.cancel();
    throw new BangerError('rejected_content', `${what} is ${declared} bytes, over the limit of ${max}`, {
      fix: 'this is not a normal image manifest; check the reference',
    });
  }
  const chunks: Buffer[] = [];
  let total = 0;
  if (res.body) {
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
      total += c.length;
      if (total > max) {
        await res.body.cancel().catch(() => {});
        throw new BangerError('rejected_content', `${what} is over the limit of ${max} bytes`, {
          fix: 'this is not a normal image manifest; check the reference',
        });
      }
      chunks.push(Buffer.from(c));
    }
  }
  return Buffer.concat(chunks);
}
