import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, isIPv4, type Server, type Socket } from 'node:net';
import * as packet from 'dns-packet';
import { BangerError } from '../api/errors.js';

const ZONE = 'vm';
/** Classic DNS-over-UDP limit; larger answers set TC so the client retries over TCP. */
const UDP_MAX = 512;
/** No legitimate query for this zone comes near this (a name is ≤ 255 bytes); larger ones are dropped unparsed. */
const MAX_QUERY = 1024;
/** A query has no answer or authority records, and at most an EDNS OPT and a TSIG as additional. */
const MAX_ADDITIONAL = 2;
const TCP_MAX_CONNECTIONS = 64;
/** One source cannot take every TCP slot. */
const TCP_MAX_PER_SOURCE = 8;
const TCP_IDLE_MS = 10_000;
/** A client that stops reading is cut off instead of buffering replies without bound. */
const TCP_MAX_PENDING_WRITE = 64 * 1024;

const RCODE = { NOERROR: 0, FORMERR: 1, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = keyof typeof RCODE;

const QR = 0x8000;
const OPCODE_MASK = 0x7800;
const RD = 0x0100;

export interface DnsLog {
  warn(obj: unknown, msg?: string): void;
}

export interface DnsRecord {
  name: string;
  ipv4: string;
}

/**
 * Token buckets: `perSourceQps` (burst `perSourceBurst`) for each source address, and
 * `globalQps` (burst `globalBurst`) for all of them together, so a flood of spoofed sources is
 * bounded too. At most `maxSources` sources are tracked; when the table is full the least recently
 * seen one is forgotten (it comes back with a full bucket, which only ever helps that source).
 */
export interface DnsRateLimit {
  perSourceQps: number;
  perSourceBurst: number;
  globalQps: number;
  globalBurst: number;
  maxSources: number;
}

export const DEFAULT_DNS_RATE_LIMIT: DnsRateLimit = {
  perSourceQps: 200,
  perSourceBurst: 400,
  globalQps: 2000,
  globalBurst: 4000,
  maxSources: 4096,
};

interface Bucket {
  tokens: number;
  at: number;
}

export class SourceRateLimiter {
  private readonly sources = new Map<string, Bucket>();
  private readonly global: Bucket;
  /** Queries refused since the last report (the caller logs them at most once a minute). */
  refused = 0;

  constructor(
    private readonly limit: DnsRateLimit = DEFAULT_DNS_RATE_LIMIT,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.global = { tokens: limit.globalBurst, at: now() };
  }

  /** Takes one token for `source` (and one globally); false when either bucket is empty. */
  allow(source: string): boolean {
    const t = this.now();
    let b = this.sources.get(source);
    if (b) {
      this.sources.delete(source); // re-inserted below: Map order is least recently seen first
    } else {
      if (this.sources.size >= this.limit.maxSources) {
        const oldest = this.sources.keys().next().value;
        if (oldest !== undefined) this.sources.delete(oldest);
      }
      b = { tokens: this.limit.perSourceBurst, at: t };
    }
    this.sources.set(source, b);
    refill(b, t, this.limit.perSourceQps, this.limit.perSourceBurst);
    refill(this.global, t, this.limit.globalQps, this.limit.globalBurst);
    if (b.tokens < 1 || this.global.tokens < 1) {
      this.refused++;
      return false;
    }
    b.tokens -= 1;
    this.global.tokens -= 1;
    return true;
  }

  get trackedSources(): number {
    return this.sources.size;
  }
}

function refill(b: Bucket, t: number, rate: number, burst: number): void {
  if (t > b.at) b.tokens = Math.min(burst, b.tokens + ((t - b.at) / 1000) * rate);
  b.at = Math.max(b.at, t);
}

/**
 * The authoritative `vm.` zone over UDP and TCP. It answers only what it owns: A records of VMs,
 * NODATA for other types of a known name, NXDOMAIN (with the SOA, so negatives are cached
 * briefly) for unknown names, and REFUSED outside the zone so stub resolvers move on to their next
 * server. Input is untrusted: every reply is built inside a try so a bad packet can never take the
 * daemon down.
 */
export class VmDnsServer {
  private readonly table = new Map<string, string>();
  private udp: UdpSocket | undefined;
  private tcp: Server | undefined;
  private starting: Promise<void> | undefined;
  private readonly connections = new Set<Socket>();
  private readonly host: string;
  private readonly port: number;
  private readonly ttl: number;
  private readonly log: DnsLog | undefined;
  private readonly limiter: SourceRateLimiter;
  private readonly decode: (msg: Buffer) => packet.DecodedPacket;
  private readonly tcpPerSource = new Map<string, number>();
  private lastLimitReport = 0;
  /** Bumped on every change so a secondary or a curious `dig SOA vm.` sees the zone move. */
  private serial = Math.floor(Date.now() / 1000) >>> 0;

  /**
   * `now` (milliseconds, monotonic) drives the rate limiter; `decode` is dns-packet's decoder
   * (tests pass a counting wrapper to see which queries reach it).
   */
  constructor(o: {
    listenAddr: string;
    log?: DnsLog;
    ttl?: number;
    rateLimit?: Partial<DnsRateLimit>;
    now?: () => number;
    decode?: (msg: Buffer) => packet.DecodedPacket;
  }) {
    const { host, port } = parseListenAddr(o.listenAddr);
    this.host = host;
    this.port = port;
    this.ttl = o.ttl ?? 5;
    this.log = o.log;
    this.limiter = new SourceRateLimiter({ ...DEFAULT_DNS_RATE_LIMIT, ...o.rateLimit }, o.now);
    this.decode = o.decode ?? ((msg) => packet.decode(msg));
  }

  /** Rate limiting comes before any parsing; refusals are reported at most once a minute. */
  private admit(source: string): boolean {
    if (this.limiter.allow(source)) return true;
    const t = performance.now();
    if (t - this.lastLimitReport >= 60_000) {
      this.lastLimitReport = t;
      this.log?.warn({ source, refused: this.limiter.refused }, 'DNS queries over the rate limit dropped');
      this.limiter.refused = 0;
    }
    return false;
  }

  /** Binds UDP and TCP on the same address and port; a second call while bound is a no-op. */
  start(): Promise<void> {
    if (this.udp) return Promise.resolve();
    this.starting ??= this.bind().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  private async bind(): Promise<void> {
    // With port 0 the kernel picks the UDP port, which may already be taken for TCP: retry a few.
    for (let attempt = 0; ; attempt++) {
      const udp = await this.bindUdp();
      const port = udp.address().port;
      try {
        this.tcp = await this.listenTcp(port);
        this.udp = udp;
        return;
      } catch (e) {
        await new Promise<void>((r) => udp.close(() => r()));
        if (this.port !== 0 || attempt >= 4 || (e as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
          throw this.bindError('tcp', e as NodeJS.ErrnoException);
        }
      }
    }
  }

  async stop(): Promise<void> {
    const { udp, tcp } = this;
    this.udp = undefined;
    this.tcp = undefined;
    for (const c of this.connections) c.destroy();
    this.connections.clear();
    await Promise.all([udp ? new Promise<void>((r) => udp.close(() => r())) : undefined, tcp ? new Promise<void>((r) => tcp.close(() => r())) : undefined]);
  }

  /** The bound `host:port` (the real port when constructed with port 0); IPv6 hosts in brackets. */
  address(): string {
    const port = this.udp?.address().port ?? this.port;
    return this.host.includes(':') ? `[${this.host}]:${port}` : `${this.host}:${port}`;
  }

  set(name: string, ipv4: string): void {
    if (!isIPv4(ipv4)) throw new BangerError('bad_request', `DNS record for "${name}": "${ipv4}" is not an IPv4 address`);
    this.table.set(normalize(name), ipv4);
    this.serial = (this.serial + 1) >>> 0;
  }

  remove(name: string): void {
    if (this.table.delete(normalize(name))) this.serial = (this.serial + 1) >>> 0;
  }

  replaceAll(records: ReadonlyArray<DnsRecord>): void {
    const next = new Map<string, string>();
    for (const r of records) {
      if (!isIPv4(r.ipv4)) throw new BangerError('bad_request', `DNS record for "${r.name}": "${r.ipv4}" is not an IPv4 address`);
      next.set(normalize(r.name), r.ipv4);
    }
    // Validate everything first so a bad entry leaves the old zone intact.
    this.table.clear();
    for (const [k, v] of next) this.table.set(k, v);
    this.serial = (this.serial + 1) >>> 0;
  }

  records(): DnsRecord[] {
    return [...this.table].map(([name, ipv4]) => ({ name, ipv4 })).sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * The reply to one wire-format query, or undefined when it deserves none (too short or long, or
   * not a query: answering responses invites loops). Public for tests and fuzzing; never throws.
   */
  answer(msg: Buffer, maxSize = UDP_MAX): Buffer | undefined {
    try {
      return this.reply(msg, maxSize);
    } catch (e) {
      this.log?.warn({ err: e }, 'DNS query not answered');
      return undefined;
    }
  }

  private reply(msg: Buffer, maxSize: number): Buffer | undefined {
    if (msg.length < 12 || msg.length > MAX_QUERY) return undefined;
    const id = msg.readUInt16BE(0);
    const flags = msg.readUInt16BE(2);
    if (flags & QR) return undefined;
    const rd = flags & RD;
    if (flags & OPCODE_MASK) return headerOnly(id, rd, 'NOTIMP');
    // The header's counts are the sender's word: dns-packet would loop over 65535 records of a
    // 24-byte packet (~1.6 ms each time). A query has one question and no answers or authorities.
    if (msg.readUInt16BE(4) !== 1 || msg.readUInt16BE(6) !== 0 || msg.readUInt16BE(8) !== 0 || msg.readUInt16BE(10) > MAX_ADDITIONAL) {
      return headerOnly(id, rd, 'FORMERR');
    }
    const qEnd = questionEnd(msg);
    if (qEnd === undefined) return headerOnly(id, rd, 'FORMERR');
    // Only the header and the question are decoded (the additional section is not used), so the
    // decoder's work is bounded by one plain name.
    const head = Buffer.from(msg.subarray(0, qEnd));
    head.writeUInt16BE(0, 10);
    let q: packet.DecodedPacket;
    try {
      q = this.decode(head);
    } catch {
      return headerOnly(id, rd, 'FORMERR');
    }
    const question = q.questions?.[0];
    if (!question) return headerOnly(id, rd, 'FORMERR');
    // The question goes back byte for byte (case, class and all): dns-packet cannot re-encode
    // every class it decodes, and resolvers drop replies whose question differs from theirs.
    const encode = (flags: number, answers: packet.Answer[] = [], authorities: packet.Answer[] = []) =>
      withQuestion(packet.encode({ type: 'response', id, flags, answers, authorities }), msg.subarray(12, qEnd));

    const name = question.name.toLowerCase().replace(/\.$/, '');
    const inZone = name === ZONE || name.endsWith(`.${ZONE}`);
    const klass = question.class ?? 'IN';
    if (!inZone || (klass !== 'IN' && klass !== 'ANY')) return encode(rd | RCODE.REFUSED);

    const aa = packet.AUTHORITATIVE_ANSWER | rd;
    const type = question.type as string;
    let answers: packet.Answer[] = [];
    let rcode: Rcode = 'NOERROR';
    if (name === ZONE) {
      if (type === 'SOA' || type === 'ANY') answers.push(this.soa());
      if (type === 'NS' || type === 'ANY') answers.push({ type: 'NS', name: `${ZONE}.`, ttl: this.ttl, data: `${ZONE}.` });
    } else {
      const rel = name.slice(0, -(ZONE.length + 1));
      const ip = this.table.get(rel);
      if (ip) {
        if (type === 'A' || type === 'ANY') answers = [{ type: 'A', name: question.name, ttl: this.ttl, data: ip }];
      } else if (!this.isEmptyNonTerminal(rel)) {
        rcode = 'NXDOMAIN';
      }
    }
    const out = encode(aa | RCODE[rcode], answers, answers.length ? [] : [this.soa()]);
    return out.length > maxSize ? encode(aa | RCODE[rcode] | packet.TRUNCATED_RESPONSE) : out;
  }

  /** `api.vm` when only `web.api.vm` exists: it exists (NODATA), else resolvers would prune the subtree. */
  private isEmptyNonTerminal(rel: string): boolean {
    const suffix = `.${rel}`;
    for (const k of this.table.keys()) if (k.endsWith(suffix)) return true;
    return false;
  }

  private soa(): packet.Answer {
    return {
      type: 'SOA',
      name: `${ZONE}.`,
      ttl: this.ttl,
      data: {
        mname: `${ZONE}.`,
        rname: `hostmaster.${ZONE}.`,
        serial: this.serial,
        refresh: 3600,
        retry: 600,
        expire: 86400,
        // The negative-caching TTL: a VM created a moment after a miss should resolve quickly.
        minimum: this.ttl,
      },
    };
  }

  private bindUdp(): Promise<UdpSocket> {
    const udp = createSocket(isIPv4(this.host) ? 'udp4' : 'udp6');
    return new Promise((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException) => {
        udp.close();
        reject(this.bindError('udp', e));
      };
      udp.once('error', onError);
      udp.bind(this.port, this.host, () => {
        udp.off('error', onError);
        udp.on('error', (e) => this.log?.warn({ err: e }, 'DNS UDP socket error'));
        udp.on('message', (msg, rinfo) => {
          if (!this.admit(rinfo.address)) return;
          const reply = this.answer(msg, UDP_MAX);
          if (reply) udp.send(reply, rinfo.port, rinfo.address, () => {});
        });
        resolve(udp);
      });
    });
  }

  private listenTcp(port: number): Promise<Server> {
    const tcp = createServer((sock) => this.serveTcp(sock));
    tcp.maxConnections = TCP_MAX_CONNECTIONS;
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => {
        tcp.close();
        reject(e);
      };
      tcp.once('error', onError);
      tcp.listen(port, this.host, () => {
        tcp.off('error', onError);
        tcp.on('error', (e) => this.log?.warn({ err: e }, 'DNS TCP listener error'));
        resolve(tcp);
      });
    });
  }

  /** RFC 1035 §4.2.2 framing: each message behind a 2-byte length; several may share a segment. */
  private serveTcp(sock: Socket): void {
    const source = sock.remoteAddress ?? '?';
    const open = (this.tcpPerSource.get(source) ?? 0) + 1;
    if (open > TCP_MAX_PER_SOURCE) return void sock.destroy();
    this.tcpPerSource.set(source, open);
    this.connections.add(sock);
    sock.on('close', () => {
      this.connections.delete(sock);
      const left = (this.tcpPerSource.get(source) ?? 1) - 1;
      if (left > 0) this.tcpPerSource.set(source, left);
      else this.tcpPerSource.delete(source);
    });
    sock.on('error', () => sock.destroy());
    sock.setTimeout(TCP_IDLE_MS, () => sock.destroy());
    let buf: Buffer = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len > MAX_QUERY) return void sock.destroy();
        if (buf.length < 2 + len) break;
        // Over the rate limit a TCP client is cut off (it would only queue more).
        if (!this.admit(source)) return void sock.destroy();
        const reply = this.answer(buf.subarray(2, 2 + len), 65_535);
        buf = buf.subarray(2 + len);
        if (reply) {
          const head = Buffer.alloc(2);
          head.writeUInt16BE(reply.length);
          sock.write(Buffer.concat([head, reply]));
        }
        if (sock.writableLength > TCP_MAX_PENDING_WRITE) return void sock.destroy();
      }
      // Whatever is left is one partial message, which the length check above already bounded.
      if (buf.length > MAX_QUERY + 2) sock.destroy();
    });
  }

  private bindError(proto: 'udp' | 'tcp', e: NodeJS.ErrnoException): BangerError {
    const where = this.port === 0 ? this.host : `${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
    const [why, fix] =
      e.code === 'EADDRINUSE'
        ? [
            'the port is already in use',
            `stop what listens there (\`ss -lntup 'sport = :${this.port}'\`) or set dns_listen_addr in config.toml to a free address`,
          ]
        : e.code === 'EACCES'
          ? ['permission denied', 'ports below 1024 need root or CAP_NET_BIND_SERVICE; run bangerd as root or set dns_listen_addr to a port >= 1024']
          : e.code === 'EADDRNOTAVAIL'
            ? ['no interface has this address', `set dns_listen_addr in config.toml to an address of this host`]
            : [e.code ?? e.message, 'set dns_listen_addr in config.toml to a free host:port'];
    return new BangerError('unavailable', `cannot listen for DNS on ${where} (${proto}): ${why}`, { fix, cause: e });
  }
}

function parseListenAddr(addr: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(addr.trim());
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!host || isIP(host) === 0 || !(port >= 0 && port <= 65_535)) {
    throw new BangerError('invalid_config', `dns_listen_addr "${addr}" is not IP:PORT`, {
      fix: 'use e.g. dns_listen_addr = "127.0.0.1:42069" (IPv6 as "[::1]:42069")',
    });
  }
  return { host, port };
}

/** Record keys are VM names relative to the zone, lower-cased: `Dev` and `dev` are one name. */
function normalize(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function headerOnly(id: number, rd: number, rcode: Rcode): Buffer {
  const out = Buffer.alloc(12);
  out.writeUInt16BE(id, 0);
  out.writeUInt16BE(QR | rd | RCODE[rcode], 2);
  return out;
}

/** dns-packet emits no name compression, so a question can be spliced in right after the header. */
function withQuestion(encoded: Buffer, question: Buffer): Buffer {
  const out = Buffer.concat([encoded.subarray(0, 12), question, encoded.subarray(12)]);
  out.writeUInt16BE(1, 4);
  return out;
}

/**
 * Where the (single) question ends, or undefined when its name is not plain: dns-packet turns
 * labels into UTF-8 text joined with dots, so a label holding a dot or a byte outside printable
 * ASCII would be looked up as a different name. No such name can be in this zone (FORMERR).
 */
function questionEnd(msg: Buffer): number | undefined {
  let at = 12;
  for (;;) {
    const len = msg[at];
    if (len === undefined || len & 0xc0 || at + 1 + len > msg.length) return undefined;
    if (len === 0) break;
    for (let i = at + 1; i <= at + len; i++) {
      const b = msg[i] as number;
      if (b <= 0x20 || b >= 0x7f || b === 0x2e) return undefined;
    }
    at += 1 + len;
  }
  const end = at + 1 + 4;
  return end <= msg.length ? end : undefined;
}
