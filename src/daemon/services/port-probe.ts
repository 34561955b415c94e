import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

export interface RawPort {
  proto: string;
  address: string;
  port: number;
  pid: number | null;
  command: string;
}
export interface EnrichedPort extends RawPort {
  endpoint: string;
  url?: string;
}

const WILDCARD = new Set(['0.0.0.0', '::']);

/**
 * One entry per listener: a wildcard tcp+tcp6 (or udp+udp6) pair of the same process is one
 * dual-stack service and becomes one `tcp`/`udp` entry on 0.0.0.0. Sorted by protocol, then port.
 */
export function collapsePorts<T extends RawPort>(ports: readonly T[]): T[] {
  const out: T[] = [];
  const wildcards = new Map<string, T>();
  for (const p of ports) {
    const copy = { ...p };
    if (WILDCARD.has(p.address)) {
      const family = p.proto.replace('6', '');
      const key = `${family}/${p.port}/${p.pid ?? '-'}`;
      const twin = wildcards.get(key);
      if (twin && twin.proto !== p.proto) {
        Object.assign(twin, { proto: family, address: '0.0.0.0' });
        continue;
      }
      wildcards.set(key, copy);
    }
    out.push(copy);
  }
  return out.sort((a, b) => a.proto.localeCompare(b.proto) || a.port - b.port);
}

function once(host: string, port: number, tls: boolean, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    let got = '';
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const request = `HEAD / HTTP/1.0\r\nHost: ${host}\r\n\r\n`;
    const sock = tls
      ? tlsConnect({ host, port, rejectUnauthorized: false }, () => sock.write(request))
      : netConnect({ host, port }, () => sock.write(request));
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      got += d;
      if (got.length >= 5) finish(got.startsWith('HTTP/'));
      if (got.length > 4096) finish(false);
    });
    sock.on('error', () => finish(false));
    sock.on('end', () => finish(got.startsWith('HTTP/')));
  });
}

/** HTTPS first, then HTTP; never throws. */
export async function probeHttp(host: string, port: number, timeoutMs = 1500): Promise<'https' | 'http' | undefined> {
  if (await once(host, port, true, timeoutMs)) return 'https';
  if (await once(host, port, false, timeoutMs)) return 'http';
  return undefined;
}

export async function enrichPorts(vmName: string, hostIp: string, ports: readonly RawPort[]): Promise<EnrichedPort[]> {
  const out: EnrichedPort[] = ports.map((p) => ({ ...p, endpoint: `${vmName}.vm:${p.port}` }));
  const probe = out.filter((p) => p.proto.startsWith('tcp') && !['127.0.0.1', '::1'].includes(p.address) && p.port !== 22);
  for (let i = 0; i < probe.length; i += 8) {
    await Promise.all(
      probe.slice(i, i + 8).map(async (p) => {
        const scheme = await probeHttp(hostIp, p.port);
        if (scheme) p.url = `${scheme}://${vmName}.vm:${p.port}/`;
      }),
    );
  }
  return out;
}
