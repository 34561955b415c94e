import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { BangerError } from '../api/errors.js';
import { type Compression, compressionOf } from './decompress.js';

/** One member of an ar archive: where its bytes are in the file. */
export interface ArMember {
  name: string;
  offset: number;
  size: number;
}

const MAGIC = '!<arch>\n';
const HEADER = 60;
const MAX_MEMBERS = 64;

function bad(label: string, reason: string): BangerError {
  return new BangerError('rejected_content', `${label} is not a valid .deb (ar archive): ${reason}`, {
    fix: 'the package is corrupt or not a Debian package: check the source',
  });
}

function parseHeader(h: Buffer, pos: number, fileSize: number, label: string): ArMember {
  if (h.length < HEADER) throw bad(label, 'truncated member header');
  if (h[58] !== 0x60 || h[59] !== 0x0a) throw bad(label, `bad member header at offset ${pos}`);
  const name = h.subarray(0, 16).toString('latin1').trimEnd().replace(/\/$/, '');
  const sizeText = h.subarray(48, 58).toString('latin1').trim();
  if (!/^\d+$/.test(sizeText)) throw bad(label, `bad size of member "${name}"`);
  const size = Number(sizeText);
  const offset = pos + HEADER;
  if (offset + size > fileSize) throw bad(label, `member "${name}" runs past the end of the file`);
  return { name, offset, size };
}

/**
 * Parses the ar archive a .deb is: `!<arch>\n`, then members, each a 60-byte header (name 16,
 * mtime 12, uid 6, gid 6, mode 8, size 10, "`\n") and its data padded to an even length.
 * Only the member table is read; the data stays where it is.
 */
export function parseArHeaders(buf: Buffer, label: string): ArMember[] {
  if (buf.subarray(0, 8).toString('latin1') !== MAGIC) throw bad(label, 'missing the !<arch> magic');
  const members: ArMember[] = [];
  let pos = 8;
  while (pos < buf.length) {
    const m = parseHeader(buf.subarray(pos, pos + HEADER), pos, buf.length, label);
    members.push(m);
    if (members.length > MAX_MEMBERS) throw bad(label, 'too many members');
    pos = m.offset + m.size + (m.size % 2);
  }
  return members;
}

/** Member table of an ar file on disk (reads the headers only). */
export async function readArMembers(path: string, label = path): Promise<ArMember[]> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const magic = Buffer.alloc(8);
    await fh.read(magic, 0, 8, 0);
    if (magic.toString('latin1') !== MAGIC) throw bad(label, 'missing the !<arch> magic');
    const members: ArMember[] = [];
    let pos = 8;
    while (pos < size) {
      const h = Buffer.alloc(HEADER);
      const { bytesRead } = await fh.read(h, 0, HEADER, pos);
      const m = parseHeader(h.subarray(0, bytesRead), pos, size, label);
      members.push(m);
      if (members.length > MAX_MEMBERS) throw bad(label, 'too many members');
      pos = m.offset + m.size + (m.size % 2);
    }
    return members;
  } finally {
    await fh.close();
  }
}

/**
 * The data.tar.* member of a .deb as a stream (the package's files), with the compression its
 * name announces (sniffing decides when the name says nothing).
 */
export async function debDataStream(path: string, label = path): Promise<{ stream: Readable; member: ArMember; compression: Compression | 'auto' }> {
  const members = await readArMembers(path, label);
  if (members[0]?.name !== 'debian-binary') throw bad(label, 'the first member is not debian-binary');
  const member = members.find((m) => m.name.startsWith('data.tar'));
  if (!member) throw bad(label, 'no data.tar member');
  if (member.size === 0) throw bad(label, `${member.name} is empty`);
  const stream = createReadStream(path, { start: member.offset, end: member.offset + member.size - 1 });
  return { stream, member, compression: compressionOf(member.name) ?? 'auto' };
}
