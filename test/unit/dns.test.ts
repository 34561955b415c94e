import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { after, before, test } from 'node:test';
import * as packet from 'dns-packet';
import { VmDnsServer } from '../../src/daemon/dns.js';

/** dns-packet's decoded shape (its typings omit rcode and the per-type data). */
type Reply = { id?: number; flags?: number; rcode?: string; answers?: Array<{ type: string; data: unknown }>; authorities?: Array<{ type: string }> };

let server: VmDnsServer;
let port = 0;

before(async () => {
  server = new VmDnsServer({ listenAddr: '127.0.0.1:0' });
  await server.start();
  port = Number(server.address().split(':')[1]);
  server.replaceAll([
    { name: 'dev', ipv4: '172.30.0.2' },
    { name: 'api', ipv4: '172.30.0.3' },
  ]);
});
after(() => server.stop());

function udp(msg: Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    const t = setTimeout(() => {
      s.close();
      reject(new Error('no answer'));
    }, 2000);
    s.on('message', (m) => {
      clearTimeout(t);
      s.close();
      resolve(packet.decode(m) as unknown as Reply);
    });
    s.send(msg, port, '127.0.0.1');
  });
}
const query = (name: string, type: packet.RecordType = 'A') => packet.encode({ type: 'query', id: 42, flags: packet.RECURSION_DESIRED, questions: [{ type, name }] });

test('A records of VMs, case-insensitive, authoritative', async () => {
  const r = await udp(query('dev.vm'));
  assert.equal(r.rcode, 'NOERROR');
  assert.equal(r.id, 42);
  assert.ok((r.flags ?? 0) & packet.AUTHORITATIVE_ANSWER);
  assert.deepEqual(r.answers?.map((a) => a.data), ['172.30.0.2']);
  assert.deepEqual((await udp(query('API.VM.'))).answers?.map((a) => a.data), ['172.30.0.3']);
});

test('AAAA of a known name is NODATA with the SOA; unknown names are NXDOMAIN with the SOA', async () => {
  const aaaa = await udp(query('dev.vm', 'AAAA'));
  assert.equal(aaaa.rcode, 'NOERROR');
  assert.deepEqual(aaaa.answers, []);
  assert.equal(aaaa.authorities?.[0]?.type, 'SOA');
  const nx = await udp(query('ghost.vm'));
  assert.equal(nx.rcode, 'NXDOMAIN');
  assert.equal(nx.authorities?.[0]?.type, 'SOA');
  assert.equal((await udp(query('x.dev.vm'))).rcode, 'NXDOMAIN');
});

test('names outside vm. are REFUSED so resolvers move on', async () => {
  assert.equal((await udp(query('example.com'))).rcode, 'REFUSED');
});

test('records follow set/remove/replaceAll', async () => {
  server.set('new', '172.30.0.9');
  assert.deepEqual((await udp(query('new.vm'))).answers?.map((a) => a.data), ['172.30.0.9']);
  server.remove('new');
  assert.equal((await udp(query('new.vm'))).rcode, 'NXDOMAIN');
});

test('garbage is ignored and the server keeps answering; TCP works with length framing', async () => {
  await new Promise<void>((resolve) => {
    const s = createSocket('udp4');
    s.send(Buffer.from('not a dns packet at all, definitely'), port, '127.0.0.1', () => {
      s.close();
      resolve();
    });
  });
  assert.equal((await udp(query('dev.vm'))).rcode, 'NOERROR');
  const reply = await new Promise<Reply>((resolve, reject) => {
    const c = connect(port, '127.0.0.1', () => c.write(packet.streamEncode({ type: 'query', id: 9, questions: [{ type: 'A', name: 'api.vm' }] })));
    let buf = Buffer.alloc(0);
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        c.end();
        resolve(packet.streamDecode(buf) as unknown as Reply);
      }
    });
    c.on('error', reject);
  });
  assert.deepEqual(reply.answers?.map((a) => a.data), ['172.30.0.3']);
});

test('a port already in use is a clear error naming the address', async () => {
  const other = new VmDnsServer({ listenAddr: `127.0.0.1:${port}` });
  await assert.rejects(other.start(), /cannot listen for DNS on 127\.0\.0\.1:\d+/);
});
