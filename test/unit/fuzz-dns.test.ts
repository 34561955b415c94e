import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as packet from 'dns-packet';
import { VmDnsServer } from '../../src/daemon/dns.js';
import { fuzzCases, type Rng } from '../helpers/fuzz.js';

const TYPES = ['A', 'AAAA', 'ANY', 'SOA', 'NS', 'TXT', 'MX', 'CNAME', 'PTR', 'SRV', 'CAA'] as packet.RecordType[];
const LABELS = ['dev', 'api', 'vm', 'VM', 'Dev', 'web', 'x', 'a-b', 'com', 'example', '_tcp', '*'];

function randomName(rng: Rng): string {
  const n = rng.int(5);
  const labels = Array.from({ length: n }, () => (rng.bool(0.8) ? rng.pick(LABELS) : rng.string(12, 'abcxyz019-_.\\ \u00e9')));
  if (rng.bool(0.7)) labels.push('vm');
  return labels.filter((l) => l.length > 0 && l.length < 64).join('.');
}

/** A plausible query (sometimes with EDNS, sometimes several questions), then mutated or not. */
function randomQuery(rng: Rng): Buffer {
  const base = packet.encode({
    type: 'query',
    id: rng.int(65536),
    flags: rng.bool() ? packet.RECURSION_DESIRED : 0,
    questions: Array.from({ length: rng.bool(0.9) ? 1 : rng.int(3) }, () => ({ type: rng.pick(TYPES), name: randomName(rng) })),
    ...(rng.bool(0.3) ? { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0, options: [] } as unknown as packet.Answer] } : {}),
  });
  switch (rng.int(4)) {
    case 0:
      return base;
    case 1:
      return rng.mutate(base);
    case 2: {
      // Hostile header counts on an otherwise valid packet.
      const m = Buffer.from(base);
      for (const at of [4, 6, 8, 10]) if (rng.bool(0.5)) m.writeUInt16BE(rng.pick([0, 1, 2, 3, 255, 65535]), at);
      return m;
    }
    default:
      // Pure noise with a query-ish header.
      return rng.bytes(12 + rng.int(80)).fill(0, 2, 3);
  }
}

test('fuzz: the DNS query path (header checks, question parse, dns-packet decode, reply) never throws and stays bounded', async () => {
  const warnings: unknown[] = [];
  const s = new VmDnsServer({ listenAddr: '127.0.0.1:0', log: { warn: (o) => warnings.push(o) } });
  s.replaceAll([
    { name: 'dev', ipv4: '172.30.0.2' },
    { name: 'web.api', ipv4: '172.30.0.3' },
  ]);
  const ran = await fuzzCases('dns', { seed: 0x5eed_d115, cases: 100_000 }, (rng) => {
    const msg = randomQuery(rng);
    const maxSize = rng.bool(0.8) ? 512 : 65_535;
    const reply = s.answer(msg, maxSize);
    assert.deepEqual(warnings, [], 'no exception inside the handler');
    if (!reply) return;
    assert.ok(reply.length <= maxSize, `reply of ${reply.length} bytes over ${maxSize}`);
    assert.ok(msg.length >= 12);
    assert.equal(reply.readUInt16BE(0), msg.readUInt16BE(0), 'the id is echoed');
    assert.ok(reply.readUInt16BE(2) & 0x8000, 'a response');
    // Replies are well-formed: dns-packet (and so a resolver) can read them back.
    packet.decode(reply);
    // Hostile section counts are refused from the header alone: a bare 12-byte FORMERR.
    const hostileCounts = msg.readUInt16BE(4) !== 1 || msg.readUInt16BE(6) !== 0 || msg.readUInt16BE(8) !== 0 || msg.readUInt16BE(10) > 2;
    if (hostileCounts && (msg.readUInt16BE(2) & 0x7800) === 0) {
      assert.equal(reply.length, 12);
      assert.equal(reply.readUInt16BE(2) & 0x000f, 1, 'FORMERR');
    }
  });
  assert.ok(ran.cases > 0);
  // Still answering afterwards.
  const r = packet.decode(s.answer(packet.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'dev.vm' }] })) as Buffer) as unknown as {
    answers?: Array<{ data: unknown }>;
  };
  assert.deepEqual(
    r.answers?.map((a) => a.data),
    ['172.30.0.2'],
  );
});
