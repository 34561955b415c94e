/**
 * The browser terminal's WebSocket ↔ the daemon's own attach (an HTTP Upgrade on its Unix socket
 * carrying data-channel frames, docs/processes.md). Browser → here: binary = stdin bytes, text =
 * `{"type":"resize","rows","cols"}` (→ the resize route) or `{"type":"eof"}`. Here → browser:
 * binary = output bytes, text = `{"type":"exit","proc"}` then close 1000, or
 * `{"type":"error","error":{code,message}}` then close 1011. One code path: the same routes as the CLI.
 */
import { request } from 'node:http';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { ATTACH_UPGRADE } from '../../api/proc-schemas.js';
import { encodeData, encodeFrame, FrameDecoder } from '../../util/frames.js';

/** Output messages not yet flushed to the browser before the daemon's socket is paused. */
const MAX_UNSENT_MESSAGES = 64;
const MAX_CONTROL_MESSAGE = 4096;

function sendError(ws: WebSocket, code: string, message: string): void {
  if (ws.readyState !== ws.OPEN) return;
  ws.send(JSON.stringify({ type: 'error', error: { code, message } }));
  ws.close(1011, code.slice(0, 100));
}

function postJson(socketPath: string, path: string, body: unknown): Promise<void> {
  return new Promise((resolve) => {
    const text = JSON.stringify(body);
    const req = request(
      { socketPath, path, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } },
      (res) => {
        res.resume();
        res.on('end', () => resolve());
      },
    );
    req.on('error', () => resolve());
    req.end(text);
  });
}

/** `procPath` = `/v1/vms/<ref>/procs/<proc>` (already percent-encoded segments). */
export function bridgeAttach(ws: WebSocket, socketPath: string, procPath: string, query: string): void {
  const req = request({
    socketPath,
    path: `${procPath}/attach${query}`,
    method: 'GET',
    headers: { connection: 'Upgrade', upgrade: ATTACH_UPGRADE },
  });
  let daemon: Socket | undefined;
  let finished = false;
  // What the browser sends before the daemon's upgrade completes (stdin typed at once, an eof) waits here.
  let early: Buffer[] = [];
  let earlyBytes = 0;
  const toDaemon = (frame: Buffer) => {
    if (daemon) {
      if (daemon.writable) daemon.write(frame);
      return;
    }
    earlyBytes += frame.length;
    if (earlyBytes > 1024 * 1024) return sendError(ws, 'payload_too_large', 'too much input before the attach was ready');
    early.push(frame);
  };
  req.on('error', (e) => sendError(ws, 'unavailable', `the daemon's attach failed: ${e.message}`));
  req.on('response', (res) => {
    // Not upgraded: the daemon refused (unknown VM or process...). Its JSON error goes to the browser.
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= 64 * 1024) chunks.push(c);
    });
    res.on('end', () => {
      let err = { code: 'internal', message: `attach refused with HTTP ${res.statusCode}` };
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error?: { code?: string; message?: string } };
        if (body.error?.code && body.error.message) err = { code: body.error.code, message: body.error.message };
      } catch {}
      sendError(ws, err.code, err.message);
    });
  });
  req.on('upgrade', (_res, socket: Socket, head: Buffer) => {
    daemon = socket;
    const decoder = new FrameDecoder();
    let unsent = 0;
    const onChunk = (chunk: Buffer) => {
      let frames: ReturnType<FrameDecoder['push']>;
      try {
        frames = decoder.push(chunk);
      } catch (e) {
        socket.destroy();
        return sendError(ws, 'internal', `bad frame from the daemon: ${(e as Error).message}`);
      }
      for (const f of frames) {
        if (f.type === 'D' && (f.stream === 1 || f.stream === 2)) {
          if (ws.readyState !== ws.OPEN) continue;
          unsent++;
          if (unsent > MAX_UNSENT_MESSAGES) socket.pause();
          ws.send(f.payload, { binary: true }, () => {
            unsent--;
            if (unsent <= MAX_UNSENT_MESSAGES / 2) socket.resume();
          });
        } else if (f.type === 'R') {
          finished = true;
          let r: { ok?: boolean; proc?: unknown; error?: { code?: string; message?: string } | string; code?: string } = {};
          try {
            r = JSON.parse(f.payload.toString('utf8'));
          } catch {}
          if (r.ok) {
            if (ws.readyState === ws.OPEN) {
              ws.send(JSON.stringify({ type: 'exit', proc: r.proc ?? null }));
              ws.close(1000);
            }
          } else {
            const e = typeof r.error === 'object' && r.error ? r.error : { code: r.code, message: typeof r.error === 'string' ? r.error : 'attach failed' };
            sendError(ws, e.code ?? 'internal', e.message ?? 'attach failed');
          }
          socket.end();
        }
      }
    };
    socket.on('data', onChunk);
    socket.on('error', () => {});
    socket.on('close', () => {
      if (!finished) sendError(ws, 'unavailable', 'the daemon closed the attach connection');
    });
    if (head.length) onChunk(head);
    for (const frame of early) socket.write(frame);
    early = [];
  });
  req.end();

  ws.on('message', (data, isBinary) => {
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (isBinary) {
      for (const frame of encodeData(buf, 0)) toDaemon(frame);
      return;
    }
    if (buf.length > MAX_CONTROL_MESSAGE) return sendError(ws, 'bad_request', 'control message too large');
    let msg: { type?: unknown; rows?: unknown; cols?: unknown };
    try {
      msg = JSON.parse(buf.toString('utf8'));
    } catch {
      return sendError(ws, 'bad_request', 'a text message must be JSON');
    }
    if (msg.type === 'eof') {
      toDaemon(encodeFrame('E'));
    } else if (msg.type === 'resize' && Number.isInteger(msg.rows) && Number.isInteger(msg.cols)) {
      // The resize route validates the numbers (zod) like any other client's.
      void postJson(socketPath, `${procPath}/resize`, { rows: msg.rows, cols: msg.cols });
    } else sendError(ws, 'bad_request', 'unknown control message');
  });
  ws.on('close', () => {
    if (daemon && !daemon.destroyed) {
      // Detach: the process keeps running.
      if (daemon.writable) daemon.write(encodeFrame('C'));
      setTimeout(() => daemon?.destroy(), 2000).unref();
    } else req.destroy();
  });
  ws.on('error', () => {});
}
