import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import * as packet from 'dns-packet';
import { BangerError } from '../api/errors.js';

const ZONE = 'vm';
const MAX_TCP_MESSAGE = 4096;

interface Log {
  warn(obj: unknown, msg?: string): void;
}

/**
 * The authoritative `vm.` zone, served over UDP and TCP. Answers only what it owns: A records of
 * VMs, NODATA for other types of a known name, NXDOMAIN (with SOA) for unknown names, REFUSED
 * outside the zone so resolvers move on to their next server.
 */
export class VmDnsServer {
  private readonly table = new Map<string, string>();
  private udp: UdpSocket | undefined;
  private tcp: Server | undefined;
  private readonly host: string;
  private readonly port: number;
  private readonly ttl: number;
  private readonly log: Log | undefined;

  constructor(o: { listenAddr: string; log?: Log; ttl?: number }) {
    const m = /^\[?([^\]]+)\]?:(\d+)$/.exec(o.listenAddr);
    if (!m) throw new BangerError('invalid_config', `bad DNS listen address "${o.listenAddr}"`, { fix: 'use IP:PORT' });
    this.host = m[1] as string;
    this.port = Number(m[2]);
    this.ttl = o.ttl ?? 5;
    this.log = o.log;
  }

  async start(): Promise<void> {
    const family = this.host.includes(':') ? 'udp6' : 'udp4';
    const udp = createSocket(family);
    await new Promise<void>((resolve, reject) => {
      udp.once('error', (e) => reject(this.bindError(e)));
      udp.bind(this.port, this.host, () => resolve());
    });
    udp.on('error', (e) => this.log?.warn({ err: e }, 'DNS UDP socket error'));
    udp.on('message', (msg, rinfo) => {
      const reply = this.answer(msg, 512);
      if (reply) udp.send(reply, rinfo.port, rinfo.address);
    });
    this.udp = udp;
    const port = (udp.address() as { port: number }).port;
    const tcp = createServer((sock) => this.serveTcp(sock));
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', (e) => reject(this.bindError(e)));
      tcp.listen(port, this.host, () => resolve());
    }).catch(async (e) => {
      udp.close();
      throw e;
    });
    this.tcp = tcp;
  }

  async stop(): Promise<void> {
    this.udp?.close();
    await new Promise<void>((r) => (this.tcp ? this.tcp.close(() => r()) : r()));
    this.udp = undefined;
    this.tcp = undefined;
  }

  address(): string {
    const a = this.udp?.address();
    return a ? `${a.address}:${a.port}` : `${this.host}:${this.port}`;
  }

  set(name: string, ipv4: string): void {
    this.table.set(name.toLowerCase(), ipv4);
  }
  remove(name: string): void {
    this.table.delete(name.toLowerCase());
  }
  replaceAll(records: ReadonlyArray<{ name: string; ipv4: string }>): void {
    this.table.clear();
    for (const r of records) this.set(r.name, r.ipv4);
  }
  records(): Array<{ name: string; ipv4: string }> {
    return [...this.table].map(([name, ipv4]) => ({ name, ipv4 }));
  }

  private bindError(e: Error): BangerError {
    return new BangerError('unavailable', `cannot listen for DNS on ${this.host}:${this.port}: ${e.message}`, {
      fix: 'free the port or set dns_listen_addr in config.toml',
    });
  }

  private serveTcp(sock: Socket): void {
    let buf = Buffer.alloc(0);
    sock.setTimeout(10_000, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > MAX_TCP_MESSAGE + 2) return void sock.destroy();
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len > MAX_TCP_MESSAGE) return void sock.destroy();
        if (buf.length < 2 + len) break;
        const reply = this.answer(buf.subarray(2, 2 + len), 65535);
        buf = buf.subarray(2 + len);
        if (reply) {
          const head = Buffer.alloc(2);
          head.writeUInt16BE(reply.length);
          sock.write(Buffer.concat([head, reply]));
        }
      }
    });
  }

  private soa(): packet.Answer {
    return {
      type: 'SOA',
      name: ZONE,
      ttl: this.ttl,
      data: { mname: 'ns.vm', rname: 'hostmaster.vm', serial: 1, refresh: 3600, retry: 600, expire: 86400, minimum: this.ttl },
    } as packet.Answer;
  }

  /** Builds the reply to one query; undefined for input that deserves no answer. */
  answer(msg: Buffer, maxSize: number): Buffer | undefined {
    if (msg.length < 12 || msg.length > MAX_TCP_MESSAGE) return undefined;
    let q: packet.Packet;
    try {
      q = packet.decode(msg);
    } catch {
      return undefined;
    }
    if (q.type !== 'query') return undefined;
    const base = { type: 'response' as const, id: q.id ?? 0, questions: q.questions ?? [] };
    const flags = (rcode: string, aa: boolean) => (aa ? packet.AUTHORITATIVE_ANSWER : 0) | (packet.RECURSION_DESIRED & (q.flags ?? 0)) | rcodeBits(rcode);
    if ((q.questions ?? []).length !== 1) return packet.encode({ ...base, flags: flags('FORMERR', false) });
    const question = (q.questions as packet.Question[])[0] as packet.Question;
    const name = question.name.toLowerCase().replace(/\.$/, '');
    if (name !== ZONE && !name.endsWith(`.${ZONE}`)) return packet.encode({ ...base, flags: flags('REFUSED', false) });
    let out: Buffer;
    if (name === ZONE) {
      const answers = question.type === 'SOA' ? [this.soa()] : question.type === 'NS' ? [{ type: 'NS', name: ZONE, ttl: this.ttl, data: 'ns.vm' } as packet.Answer] : [];
      out = packet.encode({ ...base, flags: flags('NOERROR', true), answers, authorities: answers.length ? [] : [this.soa()] });
    } else {
      const label = name.slice(0, -(ZONE.length + 1));
      const ip = label.includes('.') ? undefined : this.table.get(label);
      if (!ip) out = packet.encode({ ...base, flags: flags('NXDOMAIN', true), authorities: [this.soa()] });
      else if (question.type === 'A' || (question.type as string) === 'ANY')
        out = packet.encode({ ...base, flags: flags('NOERROR', true), answers: [{ type: 'A', name: question.name, ttl: this.ttl, data: ip }] });
      else out = packet.encode({ ...base, flags: flags('NOERROR', true), authorities: [this.soa()] });
    }
    if (out.length > maxSize) out = packet.encode({ ...base, flags: flags('NOERROR', true) | packet.TRUNCATED_RESPONSE });
    return out;
  }
}

function rcodeBits(rcode: string): number {
  return { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 }[rcode] ?? 2;
}
