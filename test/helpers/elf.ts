/** A minimal ELF64 x86-64 image: a header with one program header, padded to `size` bytes with NOPs. */
export function fakeElf(size = 64 + 56 + 1000): Buffer {
  const b = Buffer.alloc(size, 0x90);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  b.writeUInt16LE(2, 16);
  b.writeUInt16LE(0x3e, 18);
  b.writeBigUInt64LE(64n, 32);
  b.writeBigUInt64LE(0n, 40);
  b.writeUInt16LE(64, 52);
  b.writeUInt16LE(56, 54);
  b.writeUInt16LE(1, 56);
  return b;
}
