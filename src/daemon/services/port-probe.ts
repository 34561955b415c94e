import { isIPv4, connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { GuestListener, GuestPort } from '../../api/schemas.js';

export type PortProto = 'tcp' | 'tcp6' | 'udp' | 'udp6';

/** A listener as the agent reports it (proto is a PortProto, passed through as a string). */
export type RawPort = GuestListener;

/** A listener with the host's view: always its endpoint, a URL when it answered HTTP(S). */
export type EnrichedPort = GuestPort & { endpoint: string };

const WILDCARD = new Set(['0.0.0.0', '::']);
const PROTO_ORDER: Record<string, number> = { tcp: 0, tcp6: 1, udp: 2, udp6: 3 };
const MAX_READ = 4096;
const PROBE_CONCURRENCY = 8;
/** `vm ports` answers within this, whatever the guest listens on: unprobed ports get no url. */
export const PROBE_DEADLINE_MS = 10_000;

/**
 * One entry per listener. A process that listens on both wildcards of one port (tcp 0.0.0.0 +
 * tcp6 ::, likewise udp) runs one dual-stack service, reported once as `tcp`/`udp` on 0.0.0.0;
 * exact duplicates (SO_REUSEPORT workers) are dropped. Sorted by protocol, port, then address.
 */
export function collapsePorts<T extends RawPort>(ports: readonly T[]): T[] {
  const out: T[] = [];
  const seen = new Set<string>();
  const wildcards = new Map<string, T>();
  for (const p of ports) {
    const exact = `${p.proto}|${p.address}|${p.port}|${p.pid ?? '-'}`;
    if (seen.has(exact)) continue;
    seen.add(exact);
    const copy = { ...p };
    if (WILDCARD.has(p.address)) {
      const family = p.proto.replace(/6$/, '');
      const key = `${family}|${p.port}|${p.pid ?? '-'}`;
      const twin = wildcards.get(key);
      if (twin && twin.proto !== p.proto) {
        Object.assign(twin, { proto: family, address: '0.0.0.0' });
        continue;
      }
      wildcards.set(key, copy);
    }
    out.push(copy);
  }
  return out.sort(
    (a, b) =>
      (PROTO_ORDER[a.proto] ?? 9) - (PROTO_ORDER[b.proto] ?? 9) || a.proto.localeCompare(b.proto) || a.port - b.port || a.address.localeCompare(b.address),
  );
}

/**
 * Opens one connection, runs `onConnect`, and resolves with `decide(received)` once the peer has
 * said enough, closed, failed or run out of time. Reads are capped at MAX_READ. Never rejects.
 */
function exchange(
  open: () => Socket,
  connectEvent: 'connect' | 'secureConnect',
  request: string,
  decide: (got: Buffer, connected: boolean) => boolean,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    let sock: Socket;
    let connected = false;
    let got = Buffer.alloc(0);
    let timer: NodeJS.Timeout | undefined;
    const finish = () => {
      if (timer === undefined) return;
      clearTimeout(timer);
      timer = undefined;
      signal?.removeEventListener('abort', finish);
      sock?.destroy();
      resolve(decide(got, connected));
    };
    timer = setTimeout(finish, timeoutMs);
    signal?.addEventListener('abort', finish, { once: true });
    try {
      sock = open();
    } catch {
      // e.g. an out-of-range port: net.connect throws synchronously.
      clearTimeout(timer);
      timer = undefined;
      signal?.removeEventListener('abort', finish);
      return resolve(false);
    }
    sock.once(connectEvent, () => {
      connected = true;
      sock.write(request);
    });
    sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]).subarray(0, MAX_READ);
      // The first bytes settle it; waiting for more only costs time.
      if (got.length >= 5 || got.length >= MAX_READ) finish();
    });
    sock.on('error', finish);
    sock.on('end', finish);
    sock.on('close', finish);
  });
}

const isHttp = (got: Buffer) => got.subarray(0, 5).toString('latin1') === 'HTTP/';

/**
 * HTTPS first (a server that speaks TLS would answer a plain request with garbage or not at all),
 * then HTTP. HTTPS means a completed TLS handshake, whatever follows; the HEAD is sent so the
 * server logs an ordinary request rather than a dropped connection. Never throws.
 */
export async function probeHttp(host: string, port: number, timeoutMs = 1500, signal?: AbortSignal): Promise<'https' | 'http' | undefined> {
  const head = `HEAD / HTTP/1.0\r\nHost: ${host.includes(':') ? `[${host}]` : host}\r\n\r\n`;
  const tls = await exchange(
    // Certificates of dev servers are self-signed or issued for other names: the probe asks only
    // whether TLS is spoken. No SNI: the host is an address.
    () => tlsConnect({ host, port, rejectUnauthorized: false }),
    'secureConnect',
    head,
    (_got, connected) => connected,
    timeoutMs,
    signal,
  );
  if (tls) return 'https';
  const http = await exchange(
    () => netConnect({ host, port }),
    'connect',
    head,
    (got) => isHttp(got),
    timeoutMs,
    signal,
  );
  return http ? 'http' : undefined;
}

/**
 * `endpoint` for every listener and `url` for the TCP ones that answered HTTP(S) on the VM's
 * address. Listeners bound to loopback are not probed: the host cannot reach them. All probing
 * shares one deadline (`deadlineMs`): whatever is not known by then is returned without a url.
 */
export async function enrichPorts(
  vmName: string,
  hostIp: string,
  ports: readonly RawPort[],
  timeoutMs = 1500,
  deadlineMs = PROBE_DEADLINE_MS,
): Promise<EnrichedPort[]> {
  return (await enrichPortsWithin(vmName, hostIp, ports, { timeoutMs, deadlineMs })).ports;
}

export interface EnrichResult {
  ports: EnrichedPort[];
  /** TCP ports not probed (or not finished) when the deadline came; 0 when every probe finished. */
  unprobed: number;
  /** Set when the deadline cut probing short: what to tell the user. */
  note?: string;
}

export async function enrichPortsWithin(
  vmName: string,
  hostIp: string,
  ports: readonly RawPort[],
  o: { timeoutMs?: number; deadlineMs?: number } = {},
): Promise<EnrichResult> {
  const timeoutMs = o.timeoutMs ?? 1500;
  const deadlineMs = o.deadlineMs ?? PROBE_DEADLINE_MS;
  const out: EnrichedPort[] = ports.map((p) => ({ ...p, endpoint: `${vmName}.vm:${p.port}` }));
  const reachable = out.filter((p) => p.proto.startsWith('tcp') && !isLoopback(p.address));
  // tcp and tcp6 entries of one port (different processes) share one probe.
  const unique = [...new Set(reachable.map((p) => p.port))];
  const schemes = new Map<number, 'https' | 'http' | undefined>();
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), deadlineMs);
  try {
    await mapLimit(
      unique,
      PROBE_CONCURRENCY,
      async (port) => {
        const scheme = await probeHttp(hostIp, port, timeoutMs, deadline.signal);
        // A probe cut by the deadline proves nothing: leave the port unknown.
        if (!deadline.signal.aborted) schemes.set(port, scheme);
      },
      deadline.signal,
    );
  } finally {
    clearTimeout(timer);
  }
  for (const p of reachable) {
    const scheme = schemes.get(p.port);
    if (scheme) p.url = `${scheme}://${vmName}.vm:${p.port}/`;
  }
  const unprobed = unique.length - schemes.size;
  if (unprobed === 0) return { ports: out, unprobed };
  return {
    ports: out,
    unprobed,
    note: `${unprobed} of ${unique.length} TCP port(s) were not probed for HTTP(S) within ${deadlineMs / 1000}s; they are listed without a url`,
  };
}

function isLoopback(address: string): boolean {
  const a = address.toLowerCase().replace(/^::ffff:/, '');
  return a === '::1' || (isIPv4(a) && a.startsWith('127.'));
}

/**
 * Runs `fn` over `items` with at most `limit` in flight (a slow port does not hold back a batch);
 * nothing new starts once `signal` is aborted.
 */
async function mapLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>, signal?: AbortSignal): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length && !signal?.aborted) {
      const item = items[next++] as T;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
