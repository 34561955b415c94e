import * as tar from 'tar-stream';

export type TarEntry = Partial<tar.Header> & { name: string; body?: string | Buffer };

/**
 * A tar archive built in memory from headers (+ bodies), read while packing so a big entry never
 * waits for its bytes to be consumed. Owners default to root, modes to 0755 for directories and
 * 0644 otherwise; anything can be overridden, hostile names and types included.
 */
export async function tarOf(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const read = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const { body, ...h } of entries) {
    const header = { uid: 0, gid: 0, mode: h.type === 'directory' ? 0o755 : 0o644, ...h };
    const isFile = h.type === undefined || h.type === 'file';
    await new Promise<void>((res, rej) => {
      const done = (e?: Error | null) => (e ? rej(e) : res());
      if (isFile) pack.entry(header, body ?? '', done);
      else pack.entry(header, done);
    });
  }
  pack.finalize();
  await read;
  return Buffer.concat(chunks);
}
