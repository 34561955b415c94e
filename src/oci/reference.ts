import { BangerError } from '../api/errors.js';

/** A parsed image reference: `[registry/]repository[:tag][@digest]`, normalised like Docker does. */
export interface ImageReference {
  /** Host (and port) to talk to; Docker Hub is `registry-1.docker.io`. */
  registry: string;
  repository: string;
  tag?: string | undefined;
  digest?: string | undefined;
}

const DOCKER_HUB = 'registry-1.docker.io';
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
export const DIGEST = /^sha256:[a-f0-9]{64}$/;

function bad(ref: string, why: string): BangerError {
  return new BangerError('bad_request', `invalid image reference "${ref}": ${why}`, {
    fix: 'use [registry/]name[:tag][@sha256:<hex>], e.g. debian:bookworm or 127.0.0.1:5000/team/app:v1',
  });
}

export function parseReference(input: string): ImageReference {
  const ref = input.trim();
  if (!ref || ref.length > 512) throw bad(input, 'empty or longer than 512 characters');
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad(input, 'the digest must be sha256:<64 hex digits>');
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(input, `tag "${tag}" has characters a tag cannot have`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0] as string;
  // Like Docker: the first component is a registry when it has a dot or a port, or is localhost.
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    parts.shift();
  }
  if (registry === 'docker.io' || registry === 'index.docker.io') registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  for (const p of parts) {
    if (!COMPONENT.test(p)) throw bad(input, `"${p}" is not a valid repository path component (lowercase letters, digits and separators)`);
  }
  if (!tag && !digest) tag = 'latest';
  return { registry, repository: parts.join('/'), tag, digest };
}

export function formatReference(r: ImageReference): string {
  const host = r.registry === DOCKER_HUB ? 'docker.io' : r.registry;
  return `${host}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}

/** A friendly image name from a reference: `docker.io/library/debian:bookworm` → `debian-bookworm`. */
export function defaultImageName(r: ImageReference): string {
  const last = r.repository.split('/').at(-1) as string;
  const suffix = r.tag && r.tag !== 'latest' ? `-${r.tag}` : r.digest && !r.tag ? `-${r.digest.slice(7, 19)}` : '';
  return `${last}${suffix}`.replace(/[^a-zA-Z0-9._-]/g, '-').slice(0, 63);
}

/** Plain HTTP is allowed only to registries on this machine's loopback. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
