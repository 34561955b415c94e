/**
 * The detach key of `vm proc attach` (and of `vm exec -i/-t` on a terminal): a byte sequence typed
 * on the local terminal that ends the attachment and leaves the process running, like docker's
 * (default Ctrl-P Ctrl-Q). Pure: the spec parser and a scanner fed the terminal's input chunks.
 */

export const DEFAULT_DETACH_KEYS = 'ctrl-p,ctrl-q';

/**
 * Docker's format: comma-separated keys, each `ctrl-<c>` (c in a–z, @, [, \, ], ^, _) or one
 * printable ASCII character. An empty string disables detaching.
 */
export function parseDetachKeys(spec: string): Buffer | undefined {
  if (spec === '') return Buffer.alloc(0);
  const bytes: number[] = [];
  for (const key of spec.split(',')) {
    const k = key.trim().toLowerCase();
    const ctrl = /^ctrl-(.)$/.exec(k);
    if (ctrl) {
      const c = (ctrl[1] as string).toUpperCase().charCodeAt(0);
      // Ctrl-@ is 0, Ctrl-A 1 … Ctrl-_ 31.
      if (c < 0x40 || c > 0x5f) return undefined;
      bytes.push(c - 0x40);
    } else if (key.length === 1 && key.charCodeAt(0) >= 0x20 && key.charCodeAt(0) < 0x7f) {
      bytes.push(key.charCodeAt(0));
    } else return undefined;
  }
  return bytes.length > 0 && bytes.length <= 16 ? Buffer.from(bytes) : undefined;
}

/**
 * Feeds input chunks through, holding back a partial match of the detach sequence until it
 * completes (then `detached` and nothing after it is forwarded) or breaks (then the held bytes go
 * out with the rest, so Ctrl-P alone still reaches the process).
 */
export class DetachKeyScanner {
  /** The bytes held back: always a proper prefix of the keys. */
  private held: number[] = [];
  detached = false;

  constructor(private readonly keys: Buffer) {}

  /** The bytes to forward for this chunk (empty once detached). */
  push(chunk: Buffer): Buffer {
    if (this.detached) return Buffer.alloc(0);
    if (this.keys.length === 0) return chunk;
    const out: number[] = [];
    for (const byte of chunk) {
      this.held.push(byte);
      // Release bytes from the front until what is held could still become the sequence.
      while (this.held.length > 0 && !this.held.every((b, i) => b === this.keys[i])) out.push(this.held.shift() as number);
      if (this.held.length === this.keys.length) {
        this.detached = true;
        this.held = [];
        return Buffer.from(out);
      }
    }
    return Buffer.from(out);
  }

  /** Bytes still held back (a prefix typed just before the input ended): forward them at EOF. */
  flush(): Buffer {
    const rest = Buffer.from(this.held);
    this.held = [];
    return rest;
  }
}
