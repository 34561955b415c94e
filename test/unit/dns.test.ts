import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import { connect, createServer } from 'node:net';
import { after, before, test } from 'node:test';
import * as packet from 'dns-packet';
import { BangerError } from '../../src/api/errors.js';
import { SourceRateLimiter, VmDnsServer } from '../../src/daemon/dns.js';

/** dns-packet's decoded shape (its typings omit rcode and the per-type data). */
type Reply = {
  id?: number;
  flags?: number;
  rcode?: string;
  flag_aa?: boolean;
  flag_tc?: boolean;
  questions?: Array<{ name: string; type: string }>;
  answers?: Array<{ type: string; name: string; data: unknown }>;
  authorities?: Array<{ type: string; data: unknown }>;
};

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

/** Sends raw bytes over UDP to the shared server; resolves with the raw reply, or undefined when none came within `ms`. */
function udpRaw(msg: Buffer, ms = 2000): Promise<Buffer | undefined> {
  return udpRawTo(msg, port, '127.0.0.1', ms);
}

async function udp(msg: Buffer): Promise<Reply> {
  const m = await udpRaw(msg);
  assert.ok(m, 'expected a UDP reply');
  return packet.decode(m) as unknown as Reply;
}

/** Sends framed messages over one TCP connection and collects `count` framed replies. */
function tcp(frames: Buffer[], count = frames.length): Promise<Reply[]> {
  return new Promise((resolve, reject) => {
    const c = connect(port, '127.0.0.1', () => c.write(Buffer.concat(frames)));
    let buf = Buffer.alloc(0);
    const replies: Reply[] = [];
    c.setTimeout(2000, () => {
      c.destroy();
      reject(new Error(`only ${replies.length}/${count} TCP replies`));
    });
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        replies.push(packet.streamDecode(buf) as unknown as Reply);
        buf = buf.subarray(2 + buf.readUInt16BE(0));
      }
      if (replies.length >= count) {
        c.end();
        resolve(replies);
      }
    });
    c.on('error', reject);
  });
}

const q = (name: string, type: packet.RecordType = 'A', id = 42): packet.Packet => ({
  type: 'query',
  id,
  flags: packet.RECURSION_DESIRED,
  questions: [{ type, name }],
});
const query = (name: string, type: packet.RecordType = 'A') => packet.encode(q(name, type));
const ips = (r: Reply) => r.answers?.map((a) => a.data);

test('A records of VMs: authoritative, the id and question echoed, RD copied, no RA', async () => {
  const r = await udp(query('dev.vm'));
  assert.equal(r.rcode, 'NOERROR');
  assert.equal(r.id, 42);
  assert.equal(r.flag_aa, true);
  assert.ok((r.flags ?? 0) & packet.RECURSION_DESIRED);
  assert.equal((r.flags ?? 0) & packet.RECURSION_AVAILABLE, 0);
  assert.deepEqual(r.questions, [{ name: 'dev.vm', type: 'A', class: 'IN' }]);
  assert.deepEqual(ips(r), ['172.30.0.2']);
  assert.equal(r.answers?.[0]?.type, 'A');
});

test('a real stub resolver (c-ares) resolves VMs and gets NXDOMAIN/REFUSED for the rest', async () => {
  const r = new Resolver({ timeout: 1000, tries: 1 });
  r.setServers([`127.0.0.1:${port}`]);
  assert.deepEqual(await r.resolve4('dev.vm'), ['172.30.0.2']);
  assert.deepEqual(await r.resolve4('DEV.VM', { ttl: true }), [{ address: '172.30.0.2', ttl: 5 }]);
  await assert.rejects(r.resolve4('ghost.vm'), { code: 'ENOTFOUND' });
  await assert.rejects(r.resolve6('dev.vm'), { code: 'ENODATA' });
  await assert.rejects(r.resolve4('example.com'), { code: 'EREFUSED' });
});

test('names are case-insensitive and the answer keeps the asker’s spelling (0x20 randomisation)', async () => {
  const r = await udp(query('aPi.Vm.'));
  assert.deepEqual(ips(r), ['172.30.0.3']);
  assert.equal(r.answers?.[0]?.name, 'aPi.Vm');
  server.set('MiXeD', '172.30.0.7');
  assert.deepEqual(ips(await udp(query('mixed.vm'))), ['172.30.0.7']);
  assert.ok(server.records().some((x) => x.name === 'mixed'));
  server.remove('MIXED');
  assert.equal((await udp(query('mixed.vm'))).rcode, 'NXDOMAIN');
});

test('AAAA (and other types) of a known name is NODATA with the SOA', async () => {
  for (const type of ['AAAA', 'MX', 'TXT'] as const) {
    const r = await udp(query('dev.vm', type));
    assert.equal(r.rcode, 'NOERROR', type);
    assert.equal(r.flag_aa, true);
    assert.deepEqual(r.answers, []);
    assert.equal(r.authorities?.length, 1);
    assert.equal(r.authorities?.[0]?.type, 'SOA');
  }
});

test('unknown and deeper names are NXDOMAIN with the SOA (short negative TTL)', async () => {
  for (const name of ['ghost.vm', 'x.dev.vm', 'a.b.c.vm']) {
    const r = await udp(query(name));
    assert.equal(r.rcode, 'NXDOMAIN', name);
    assert.equal(r.flag_aa, true);
    assert.equal(r.authorities?.[0]?.type, 'SOA');
    assert.equal((r.authorities?.[0]?.data as { minimum?: number } | undefined)?.minimum, 5);
  }
});

test('the apex answers SOA and NS; other apex types are NODATA', async () => {
  const soa = await udp(query('vm', 'SOA'));
  assert.equal(soa.rcode, 'NOERROR');
  assert.equal(soa.answers?.[0]?.type, 'SOA');
  const ns = await udp(query('vm.', 'NS'));
  assert.deepEqual(
    ns.answers?.map((a) => [a.type, a.data]),
    [['NS', 'vm']],
  );
  const a = await udp(query('vm', 'A'));
  assert.equal(a.rcode, 'NOERROR');
  assert.deepEqual(a.answers, []);
  assert.equal(a.authorities?.[0]?.type, 'SOA');
});

test('a dotted VM name resolves and its parent is an empty non-terminal (NODATA, not NXDOMAIN)', async () => {
  server.set('web.shop', '172.30.0.8');
  try {
    assert.deepEqual(ips(await udp(query('web.shop.vm'))), ['172.30.0.8']);
    const parent = await udp(query('shop.vm'));
    assert.equal(parent.rcode, 'NOERROR');
    assert.deepEqual(parent.answers, []);
  } finally {
    server.remove('web.shop');
  }
  assert.equal((await udp(query('shop.vm'))).rcode, 'NXDOMAIN');
});

test('names outside vm. are REFUSED (not authoritative) so resolvers move on', async () => {
  for (const name of ['example.com', 'vm.example.com', 'notvm', '.']) {
    const r = await udp(query(name));
    assert.equal(r.rcode, 'REFUSED', name);
    assert.equal(r.flag_aa, false);
    assert.deepEqual(r.answers, []);
  }
  // Another class in the zone is not ours either.
  const ch = packet.encode({ type: 'query', id: 1, questions: [{ type: 'TXT', name: 'dev.vm', class: 'CH' }] });
  assert.equal((await udp(ch)).rcode, 'REFUSED');
  // A class dns-packet has no name for: still refused, and the question comes back byte for byte.
  const odd = Buffer.from(query('dev.vm'));
  odd.writeUInt16BE(254, odd.length - 2);
  const raw = await udpRaw(odd);
  assert.ok(raw);
  assert.equal((packet.decode(raw) as unknown as Reply).rcode, 'REFUSED');
  assert.deepEqual(raw.subarray(12, odd.length), odd.subarray(12));
});

test('records follow set/remove/replaceAll; records() lists them; bad addresses are refused', async () => {
  server.set('new', '172.30.0.9');
  assert.deepEqual(ips(await udp(query('new.vm'))), ['172.30.0.9']);
  server.set('new', '172.30.0.10');
  assert.deepEqual(ips(await udp(query('new.vm'))), ['172.30.0.10']);
  server.remove('new');
  assert.equal((await udp(query('new.vm'))).rcode, 'NXDOMAIN');

  const before = server.records();
  server.replaceAll([{ name: 'solo', ipv4: '172.30.0.20' }]);
  try {
    assert.deepEqual(server.records(), [{ name: 'solo', ipv4: '172.30.0.20' }]);
    assert.deepEqual(ips(await udp(query('solo.vm'))), ['172.30.0.20']);
    assert.equal((await udp(query('dev.vm'))).rcode, 'NXDOMAIN');
    assert.throws(() => server.set('x', 'fe80::1'), BangerError);
    assert.throws(() => server.replaceAll([{ name: 'y', ipv4: 'nope' }]), BangerError);
    assert.deepEqual(server.records(), [{ name: 'solo', ipv4: '172.30.0.20' }], 'a rejected replaceAll leaves the zone intact');
  } finally {
    server.replaceAll(before);
  }
  assert.deepEqual(ips(await udp(query('dev.vm'))), ['172.30.0.2']);
});

test('the SOA serial moves when the zone changes', async () => {
  const serial = async () => ((await udp(query('vm', 'SOA'))).answers?.[0]?.data as { serial?: number } | undefined)?.serial;
  const s1 = await serial();
  assert.equal(typeof s1, 'number');
  server.set('tmp', '172.30.0.30');
  server.remove('tmp');
  assert.notEqual(await serial(), s1);
});

test('malformed input never crashes the server: garbage and responses are dropped, bad queries get FORMERR', async () => {
  // Text read as a header says opcode 14: at most a bare 12-byte error header, never more than was sent.
  const text = await udpRaw(Buffer.from('not a dns packet at all, definitely'), 300);
  assert.ok(text === undefined || (text.length === 12 && (packet.decode(text) as unknown as Reply).rcode !== 'NOERROR'));
  assert.equal(await udpRaw(Buffer.from([1, 2, 3]), 300), undefined, 'shorter than a header: dropped');
  const response = packet.encode({ type: 'response', id: 5, flags: 0, questions: [{ type: 'A', name: 'dev.vm' }] });
  assert.equal(await udpRaw(response, 300), undefined, 'responses are never answered (no loops)');
  for (let i = 0; i < 200; i++) {
    const junk = Buffer.alloc(12 + (i % 60));
    for (let j = 0; j < junk.length; j++) junk[j] = (i * 31 + j * 17) & 0xff;
    junk[2] = (junk[2] ?? 0) & 0x07; // a query header so the parser is exercised, not skipped
    await udpRaw(junk, 5);
  }

  // Valid header, two questions / none / truncated question / compression-pointer loop: FORMERR.
  const two = packet.encode({
    type: 'query',
    id: 7,
    questions: [
      { type: 'A', name: 'dev.vm' },
      { type: 'A', name: 'api.vm' },
    ],
  });
  const none = packet.encode({ type: 'query', id: 8, questions: [] });
  const truncated = query('dev.vm').subarray(0, 16);
  const loop = Buffer.concat([Buffer.from([0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
  for (const [msg, id] of [
    [two, 7],
    [none, 8],
    [truncated, 42],
    [loop, 9],
  ] as const) {
    const r = await udp(msg);
    assert.equal(r.rcode, 'FORMERR');
    assert.equal(r.id, id);
  }
  // A non-UTF-8 label cannot be echoed faithfully: FORMERR rather than a mangled question.
  const raw = Buffer.concat([Buffer.from([0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 0xff, 0xfe, 2]), Buffer.from('vm'), Buffer.from([0, 0, 1, 0, 1])]);
  assert.equal((await udp(raw)).rcode, 'FORMERR');
  // Other opcodes (e.g. UPDATE) are not implemented.
  const update = Buffer.from(query('dev.vm'));
  update[2] = (5 << 3) | 1;
  assert.equal((await udp(update)).rcode, 'NOTIMP');

  // The server still answers, over both transports.
  assert.deepEqual(ips(await udp(query('dev.vm'))), ['172.30.0.2']);
  assert.deepEqual(ips((await tcp([packet.streamEncode(q('api.vm'))]))[0] as Reply), ['172.30.0.3']);
});

test('TCP: length-framed, several pipelined queries in one segment, each answered', async () => {
  const replies = await tcp([
    packet.streamEncode(q('dev.vm', 'A', 1)),
    packet.streamEncode(q('ghost.vm', 'A', 2)),
    packet.streamEncode(q('example.com', 'A', 3)),
  ]);
  assert.deepEqual(
    replies.map((r) => [r.id, r.rcode]),
    [
      [1, 'NOERROR'],
      [2, 'NXDOMAIN'],
      [3, 'REFUSED'],
    ],
  );
  assert.deepEqual(ips(replies[0] as Reply), ['172.30.0.2']);
});

test('TCP: a frame longer than any query closes the connection; the server lives on', async () => {
  const closed = await new Promise<boolean>((resolve) => {
    const c = connect(port, '127.0.0.1', () => c.write(Buffer.from([0xff, 0xff, 1, 2, 3])));
    c.on('close', () => resolve(true));
    c.on('error', () => {});
    c.setTimeout(2000, () => {
      c.destroy();
      resolve(false);
    });
  });
  assert.ok(closed);
  assert.equal((await tcp([packet.streamEncode(q('dev.vm'))]))[0]?.rcode, 'NOERROR');
});

test('replies over the size limit (512 on UDP) carry only the question and TC; TCP carries them whole', () => {
  // The zone's own answers are small, so exercise the limit directly with a long name.
  const label = 'a'.repeat(63);
  const long = `${label}.${label}.${label}.x`;
  server.set(long, '172.30.0.40');
  try {
    const msg = query(`${long}.vm`);
    const small = server.answer(msg, 100);
    assert.ok(small);
    const r = packet.decode(small) as unknown as Reply;
    assert.equal(r.flag_tc, true);
    assert.deepEqual(r.answers, []);
    const whole = packet.decode(server.answer(msg, 65_535) as Buffer) as unknown as Reply;
    assert.equal(whole.flag_tc, false);
    assert.deepEqual(ips(whole), ['172.30.0.40']);
  } finally {
    server.remove(long);
  }
});

test('a port already in use is a clear unavailable error naming the address and a fix', async () => {
  const other = new VmDnsServer({ listenAddr: `127.0.0.1:${port}` });
  await assert.rejects(other.start(), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'unavailable');
    assert.match(e.message, new RegExp(`cannot listen for DNS on 127\\.0\\.0\\.1:${port} \\(udp\\): the port is already in use`));
    assert.match(e.fix ?? '', /dns_listen_addr/);
    return true;
  });
  // TCP taken while UDP is free: also refused, and the UDP socket is released again.
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  const tcpPort = (blocker.address() as { port: number }).port;
  try {
    const third = new VmDnsServer({ listenAddr: `127.0.0.1:${tcpPort}` });
    await assert.rejects(third.start(), /cannot listen for DNS on 127\.0\.0\.1:\d+ \(tcp\)/);
    const s = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(tcpPort, '127.0.0.1', () => resolve());
    });
    s.close();
  } finally {
    blocker.close();
  }
});

test('listen addresses are validated; stop then start again works', async () => {
  for (const bad of ['localhost:53', '127.0.0.1', '127.0.0.1:99999', ':53', 'x']) {
    assert.throws(
      () => new VmDnsServer({ listenAddr: bad }),
      (e: unknown) => e instanceof BangerError && e.code === 'invalid_config',
      bad,
    );
  }
  const s = new VmDnsServer({ listenAddr: '127.0.0.1:0' });
  await s.stop(); // stopping a server that never started is harmless
  await s.start();
  s.set('dev', '172.30.0.2');
  await s.stop();
  await s.start();
  assert.match(s.address(), /^127\.0\.0\.1:\d+$/);
  await s.stop();
  assert.equal(new VmDnsServer({ listenAddr: '[::1]:5353' }).address(), '[::1]:5353');
});

// ---- hostile input: attacker-chosen counts, floods -------------------------------------------

/** The wire header of a query for dev.vm with the given section counts (nothing else changed). */
function withCounts(qd: number, an: number, ns: number, ar: number, id = 77): Buffer {
  const m = Buffer.from(packet.encode(q('dev.vm', 'A', id)));
  m.writeUInt16BE(qd, 4);
  m.writeUInt16BE(an, 6);
  m.writeUInt16BE(ns, 8);
  m.writeUInt16BE(ar, 10);
  return m;
}

test('attacker-chosen record counts never reach the decoder: FORMERR from the header alone; legit queries still answered', async () => {
  let decoded = 0;
  const s = new VmDnsServer({
    listenAddr: '127.0.0.1:0',
    decode: (m) => {
      decoded++;
      return packet.decode(m);
    },
  });
  await s.start();
  try {
    s.set('dev', '172.30.0.2');
    const hostile = [
      withCounts(65535, 0, 0, 0),
      withCounts(1, 65535, 65535, 65535), // the ~1.6 ms-per-packet case: 24 bytes claiming 196605 records
      withCounts(1, 65535, 0, 0),
      withCounts(1, 0, 65535, 0),
      withCounts(1, 0, 0, 65535),
      withCounts(1, 0, 0, 3),
    ];
    for (const m of hostile) {
      assert.equal(m.length, 24);
      const r = s.answer(m);
      assert.ok(r, 'a query header gets an answer');
      assert.equal(r.length, 12, 'header only: nothing of the packet was decoded or echoed');
      const d = packet.decode(r) as unknown as Reply;
      assert.equal(d.rcode, 'FORMERR');
      assert.equal(d.id, 77);
    }
    assert.equal(decoded, 0, 'the decoder never saw a hostile header');
    // Legitimate queries (with an EDNS OPT record, as stub resolvers send) are decoded and answered.
    const edns = packet.encode({
      ...q('dev.vm'),
      additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0, options: [] } as unknown as packet.Answer],
    });
    const r = packet.decode(s.answer(edns) as Buffer) as unknown as Reply;
    assert.equal(r.rcode, 'NOERROR');
    assert.deepEqual(ips(r), ['172.30.0.2']);
    assert.equal(decoded, 1);
    // Over the wire too, after the hostile packets.
    const port2 = Number(s.address().split(':')[1]);
    for (const m of hostile) await udpRawTo(m, port2, '127.0.0.1');
    const reply = await udpRawTo(query('dev.vm'), port2, '127.0.0.1');
    assert.deepEqual(ips(packet.decode(reply as Buffer) as unknown as Reply), ['172.30.0.2']);
  } finally {
    await s.stop();
  }
});

/** One UDP query from `from` (e.g. 127.0.0.2, a second source on loopback); undefined when no reply within `ms`. */
function udpRawTo(msg: Buffer, toPort: number, from: string, ms = 2000): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const t = setTimeout(() => {
      s.close();
      resolve(undefined);
    }, ms);
    s.on('message', (m) => {
      clearTimeout(t);
      s.close();
      resolve(m);
    });
    s.bind(0, from, () => s.send(msg, toPort, '127.0.0.1'));
  });
}

test('a flood from one source is rate-limited while another source still gets answers (UDP, loopback)', async () => {
  let now = 1_000_000;
  const s = new VmDnsServer({
    listenAddr: '127.0.0.1:0',
    rateLimit: { perSourceQps: 10, perSourceBurst: 5 },
    now: () => now, // frozen unless the test moves it: no refill while the flood runs
  });
  await s.start();
  try {
    s.set('dev', '172.30.0.2');
    const sport = Number(s.address().split(':')[1]);
    const flooder = createSocket('udp4');
    await new Promise<void>((r) => flooder.bind(0, '127.0.0.1', () => r()));
    const answered = new Set<number>();
    let markerSeen: () => void = () => {};
    const marker = new Promise<void>((r) => {
      markerSeen = r;
    });
    flooder.on('message', (m) => (m.toString() === 'marker' ? markerSeen() : answered.add(m.readUInt16BE(0))));
    for (let id = 1; id <= 40; id++) flooder.send(packet.encode(q('dev.vm', 'A', id)), sport, '127.0.0.1');
    // Another source (127.0.0.2) is answered at once, after the whole flood reached the server.
    const other = await udpRawTo(packet.encode(q('dev.vm', 'A', 999)), sport, '127.0.0.2');
    assert.ok(other, 'the second source got an answer');
    assert.deepEqual(ips(packet.decode(other) as unknown as Reply), ['172.30.0.2']);
    // Replies to the flooder were sent before that one. A marker sent to the flooder now queues
    // behind them on its socket: once it is read, every reply the flood got has been read.
    const markerFrom = createSocket('udp4');
    markerFrom.send('marker', (flooder.address() as { port: number }).port, '127.0.0.1');
    await marker;
    markerFrom.close();
    assert.equal(answered.size, 5, `answered ${[...answered].join(',')}`);
    assert.deepEqual(
      [...answered].sort((a, b) => a - b),
      [1, 2, 3, 4, 5],
      'the burst, then nothing',
    );
    // A second later the flooder's bucket has refilled (10 qps, burst 5): it is answered again.
    now += 1000;
    const again = await udpRawTo(packet.encode(q('dev.vm', 'A', 500)), sport, '127.0.0.1');
    assert.ok(again);
    flooder.close();
  } finally {
    await s.stop();
  }
});

test('TCP: one source cannot hold every connection; a rate-limited TCP client is cut off; others are served', async () => {
  const now = 0;
  const s = new VmDnsServer({ listenAddr: '127.0.0.1:0', rateLimit: { perSourceQps: 1, perSourceBurst: 3 }, now: () => now });
  await s.start();
  s.set('dev', '172.30.0.2');
  const sport = Number(s.address().split(':')[1]);
  const open = (localAddress: string) =>
    new Promise<import('node:net').Socket>((resolve, reject) => {
      const c = connect({ port: sport, host: '127.0.0.1', localAddress }, () => resolve(c));
      c.on('error', reject);
    });
  const closed = (c: import('node:net').Socket) => new Promise<void>((r) => (c.destroyed ? r() : c.once('close', () => r())));
  const sockets: import('node:net').Socket[] = [];
  try {
    for (let i = 0; i < 8; i++) sockets.push(await open('127.0.0.1'));
    const ninth = await open('127.0.0.1');
    sockets.push(ninth);
    ninth.resume();
    await closed(ninth); // the server hangs up on the 9th connection of one source
    // A different source still gets a connection and an answer.
    const replies = await new Promise<Reply[]>((resolve, reject) => {
      const c = connect({ port: sport, host: '127.0.0.1', localAddress: '127.0.0.2' }, () => c.write(packet.streamEncode(q('dev.vm'))));
      c.on('data', (d) => {
        c.end();
        resolve([packet.streamDecode(d) as unknown as Reply]);
      });
      c.on('error', reject);
    });
    assert.deepEqual(ips(replies[0] as Reply), ['172.30.0.2']);
    // Pipelining past the bucket (3 tokens) on one connection: 3 answers, then the server hangs up.
    const flood = sockets[0] as import('node:net').Socket;
    let got = Buffer.alloc(0);
    flood.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
    flood.write(Buffer.concat(Array.from({ length: 20 }, (_, i) => packet.streamEncode(q('dev.vm', 'A', i + 1)))));
    await closed(flood);
    let count = 0;
    while (got.length >= 2) {
      count++;
      got = got.subarray(2 + got.readUInt16BE(0));
    }
    assert.equal(count, 3);
  } finally {
    for (const c of sockets) c.destroy();
    await s.stop();
  }
});

test('rate limiter: per-source and global buckets refill with time; the source table stays bounded', () => {
  let now = 0;
  const l = new SourceRateLimiter({ perSourceQps: 100, perSourceBurst: 2, globalQps: 1000, globalBurst: 5, maxSources: 3 }, () => now);
  assert.deepEqual([l.allow('a'), l.allow('a'), l.allow('a')], [true, true, false]);
  assert.deepEqual([l.allow('b'), l.allow('b')], [true, true]);
  assert.equal(l.allow('c'), true); // the 5th token of the global burst
  assert.equal(l.allow('d'), false, 'global bucket empty: spoofed sources cannot add up without bound');
  assert.ok(l.trackedSources <= 3);
  now += 10; // 10 ms: 1 token per source (100 qps), 10 global ('a' was forgotten for 'd')
  assert.equal(l.allow('b'), true);
  assert.equal(l.allow('b'), false);
  for (let i = 0; i < 10_000; i++) l.allow(`spoofed-${i}`);
  assert.equal(l.trackedSources, 3, 'the table of sources stays bounded');
});
