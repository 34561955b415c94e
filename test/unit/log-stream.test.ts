import assert from 'node:assert/strict';
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { createServer, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { streamLog } from '../../src/daemon/log-stream.js';
import { capLogFile } from '../../src/vmm/console-log.js';

const MiB = 1024 * 1024;
let dir: string;
let n = 0;
const fresh = () => join(dir, `serial-${n++}.log`);
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'banger-log-stream-'));
});
after(() => rm(dir, { recursive: true, force: true }));

interface Served {
  url: { port: number };
  /** The response object of the (single) request, and streamLog's promise. */
  served: Promise<{ res: ServerResponse; done: Promise<void> }>;
  server: Server;
}

/** A loopback HTTP server whose one route is streamLog over `path`, as the logs route uses it. */
async function serve(path: string, lines: number, follow: boolean, ended?: () => Promise<boolean>): Promise<Served> {
  let resolveServed!: (v: { res: ServerResponse; done: Promise<void> }) => void;
  const served = new Promise<{ res: ServerResponse; done: Promise<void> }>((r) => (resolveServed = r));
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    resolveServed({ res, done: streamLog(path, { lines, follow, pollMs: 50, ...(ended ? { ended } : {}) }, req, res) });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: { port: (server.address() as AddressInfo).port }, served, server };
}

const appendTo = (path: string, data: string | Buffer) => {
  const fd = openSync(path, 'a');
  writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
  closeSync(fd);
};

test('the tail of a 600 MB (sparse) log is the last lines only, read at an offset', async () => {
  const path = fresh();
  await writeFile(path, '');
  await truncate(path, 600 * MiB);
  appendTo(path, 'one\ntwo\nthree\n');
  const { url, served, server } = await serve(path, 2, false);
  try {
    const body = await new Promise<string>((resolve, reject) => {
      request({ host: '127.0.0.1', port: url.port, path: '/' }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(text));
      })
        .on('error', reject)
        .end();
    });
    assert.equal(body, 'two\nthree\n');
    await (await served).done;
  } finally {
    server.close();
  }
});

test('follow: a client that stops reading stops the reading (bounded buffer); it then gets every byte in order; leaving ends the stream', async () => {
  const path = fresh();
  await writeFile(path, 'start\n');
  const { url, served, server } = await serve(path, 10, true);
  try {
    let received = 0;
    const chunks: Buffer[] = [];
    const client = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
      request({ host: '127.0.0.1', port: url.port, path: '/' }, resolve).on('error', reject).end();
    });
    client.on('data', (c: Buffer) => {
      received += c.length;
      chunks.push(c);
    });
    // Wait for the tail, then stop reading: the guest now writes 48 MiB.
    while (received < 'start\n'.length) await sleep(10);
    client.pause();
    const { res, done } = await served;
    const total = 16 * MiB;
    const block = Buffer.alloc(MiB);
    for (let i = 0; i < total / MiB; i++) {
      block.fill(0x41 + (i % 26));
      appendTo(path, block);
    }
    // Let the daemon side run well past the point where it would have read everything.
    while (!res.writableNeedDrain) await sleep(20);
    await sleep(1500);
    assert.ok(res.writableLength <= 2 * MiB, `the daemon buffered ${res.writableLength} bytes for a client that does not read`);
    // Reading again delivers everything, in order.
    client.resume();
    while (received < 'start\n'.length + total) await sleep(20);
    const all = Buffer.concat(chunks);
    assert.equal(all.subarray(0, 6).toString(), 'start\n');
    for (let i = 0; i < total / MiB; i++) {
      const at = 6 + i * MiB;
      assert.equal(all[at], 0x41 + (i % 26), `block ${i} in order`);
      assert.equal(all[at + MiB - 1], 0x41 + (i % 26));
    }
    // The client leaves: the stream ends (its file handle, watcher and timer released).
    client.destroy();
    await done;
  } finally {
    server.close();
  }
});

test('follow across a copy-truncate rotation: the new content after the truncate is delivered', async () => {
  const path = fresh();
  await writeFile(path, '');
  const { url, served, server } = await serve(path, 10, true);
  try {
    let text = '';
    const client = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
      request({ host: '127.0.0.1', port: url.port, path: '/' }, resolve).on('error', reject).end();
    });
    client.setEncoding('utf8');
    client.on('data', (c: string) => (text += c));
    appendTo(path, `${'b'.repeat(2 * MiB)}\nbefore\n`);
    while (!text.endsWith('before\n')) await sleep(20);
    assert.equal(await capLogFile(path, { capBytes: MiB, keepBytes: 1024 }), true);
    appendTo(path, 'after rotation\n');
    while (!text.endsWith('after rotation\n')) await sleep(20);
    client.destroy();
    await (await served).done;
  } finally {
    server.close();
  }
});

/** The whole body of one GET, and whether the server ended it (rather than the client leaving). */
function fetchAll(port: number, onData?: (text: string) => void): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: '/' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
        onData?.(text);
      });
      res.on('end', () => resolve(text));
    })
      .on('error', reject)
      .end();
  });
}

test('follow ends once the writer is done (the VM stopped), after the bytes it wrote last', async () => {
  const path = fresh();
  await writeFile(path, 'boot\n');
  let over = false;
  let asked = 0;
  const { url, served, server } = await serve(path, 10, true, async () => {
    asked++;
    return over;
  });
  try {
    let seen = '';
    const body = fetchAll(url.port, (t) => (seen = t));
    while (!seen.includes('boot\n')) await sleep(10);
    appendTo(path, 'running\n');
    while (!seen.includes('running\n')) await sleep(10);
    // Still following: the writer is not done, however many polls pass.
    const polls = asked;
    while (asked < polls + 3) await sleep(10);
    // The last words, then the end.
    appendTo(path, 'reboot: Power down\n');
    over = true;
    assert.equal(await body, 'boot\nrunning\nreboot: Power down\n');
    await (await served).done;
  } finally {
    server.close();
  }
});

test('follow of a log whose writer is already done sends the tail and ends', async () => {
  const path = fresh();
  await writeFile(path, 'one\ntwo\n');
  const { url, served, server } = await serve(path, 1, true, async () => true);
  try {
    assert.equal(await fetchAll(url.port), 'two\n');
    await (await served).done;
  } finally {
    server.close();
  }
});
