import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface Credentials {
  username: string;
  password: string;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header: `Bearer realm="…",service="…",scope="…"` (quoted or token values). */
export function parseChallenge(header: string | null | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?/g;
  for (const p of (m[2] as string).matchAll(re)) {
    params[(p[1] as string).toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  return { scheme: (m[1] as string).toLowerCase(), params };
}

const HUB_KEYS = ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io'];

/**
 * Credentials for a registry from the Docker client config (`$DOCKER_CONFIG/config.json` or
 * `~/.docker/config.json`): `auths.<host>.auth` (base64 user:pass) or username/password.
 * Credential helpers are not run (banger never executes programs a config names).
 */
export async function dockerCredentials(registry: string, env: NodeJS.ProcessEnv = process.env): Promise<Credentials | undefined> {
  const dir = env.DOCKER_CONFIG || join(env.HOME || homedir(), '.docker');
  let json: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    const text = await readFile(join(dir, 'config.json'), 'utf8');
    if (text.length > 1024 * 1024) return undefined;
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const auths = json.auths ?? {};
  const keys =
    registry === 'registry-1.docker.io'
      ? HUB_KEYS
      : [registry, `https://${registry}`, `http://${registry}`, `https://${registry}/v1/`, `https://${registry}/v2/`];
  for (const k of keys) {
    const entry = auths[k];
    if (!entry) continue;
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i > 0) return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
    }
    if (entry.username && entry.password !== undefined) return { username: entry.username, password: entry.password };
  }
  return undefined;
}

export function basicAuth(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}
