import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttp } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { createServer as createTcp, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { collapsePorts, enrichPorts, probeHttp } from '../../src/daemon/services/port-probe.js';

const servers: Server[] = [];
const listen = async (s: Server) => {
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return (s.address() as AddressInfo).port;
};
after(() => {
  for (const s of servers) s.close();
});

test('dual-stack wildcard listeners of one process collapse to one entry; others stay', () => {
  const p = (proto: string, address: string, port: number, pid: number | null = 10) => ({ proto, address, port, pid, command: 'x' });
  const out = collapsePorts([p('tcp6', '::', 22), p('tcp', '0.0.0.0', 22), p('tcp', '127.0.0.1', 5432, 20), p('udp', '0.0.0.0', 53), p('tcp6', '::', 8080, 30)]);
  assert.deepEqual(
    out.map((x) => `${x.proto} ${x.address}:${x.port}`),
    ['tcp 0.0.0.0:22', 'tcp 127.0.0.1:5432', 'tcp6 :::8080', 'udp 0.0.0.0:53'],
  );
});

test('HTTP, HTTPS and non-HTTP listeners are told apart', async () => {
  const http = await listen(createHttp((_, res) => res.end('ok')));
  const dir = mkdtempSync(join(tmpdir(), 'probe-cert-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=x', '-days', '1', '-keyout', join(dir, 'k'), '-out', join(dir, 'c')], { stdio: 'ignore' });
  const https = await listen(createHttps({ key: readFileSync(join(dir, 'k')), cert: readFileSync(join(dir, 'c')) }, (_, res) => res.end('ok')));
  rmSync(dir, { recursive: true, force: true });
  const garbage = await listen(createTcp((c) => c.end('SSH-2.0-OpenSSH_9\r\n')));
  assert.equal(await probeHttp('127.0.0.1', http), 'http');
  assert.equal(await probeHttp('127.0.0.1', https), 'https');
  assert.equal(await probeHttp('127.0.0.1', garbage), undefined);
  const enriched = await enrichPorts('dev', '127.0.0.1', [
    { proto: 'tcp', address: '0.0.0.0', port: http, pid: 1, command: 'web' },
    { proto: 'tcp', address: '127.0.0.1', port: https, pid: 2, command: 'local only' },
  ]);
  assert.equal(enriched[0]?.url, `http://dev.vm:${http}/`);
  assert.equal(enriched[0]?.endpoint, `dev.vm:${http}`);
  assert.equal(enriched[1]?.url, undefined, 'loopback-only listeners are not reachable from the host');
});
