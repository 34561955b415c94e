/**
 * A scripted browser terminal for test/e2e/web-terminal.test.ts, run inside the test home's
 * network namespace (where the daemon's web UI listens): logs in with the link given as argv[2],
 * starts a login shell with a PTY in VM argv[3] as the UI does, attaches over the WebSocket,
 * resizes, types a script, and prints `{output, messages}` as JSON once the WebSocket closes.
 */
import { WebSocket } from 'ws';
import { webLogin, webRequest, wsProtocols } from './web.js';

const [authUrl, vm, script] = process.argv.slice(2) as [string, string, string];
const base = new URL(authUrl).origin;
const { cookie, csrf, key } = await webLogin(authUrl);
const started = await webRequest(base, 'POST', `/api/v1/vms/${encodeURIComponent(vm)}/procs`, {
  headers: { cookie, 'x-banger-csrf': csrf, origin: base, 'content-type': 'application/json' },
  body: JSON.stringify({ argv: ['/bin/bash', '-l'], pty: { rows: 24, cols: 80 }, mode: 'detach', name: 'webterm' }),
});
if (started.status !== 201) throw new Error(`start: HTTP ${started.status} ${started.text}`);
const proc = started.json() as { id: string };
const ws = new WebSocket(`ws://${new URL(base).host}/api/v1/vms/${encodeURIComponent(vm)}/procs/${proc.id}/attach`, wsProtocols(key), {
  headers: { cookie, origin: base },
});
const output: Buffer[] = [];
const messages: unknown[] = [];
ws.on('message', (data, isBinary) => {
  if (isBinary) output.push(data as Buffer);
  else messages.push(JSON.parse(String(data)));
});
ws.on('open', () => {
  ws.send(JSON.stringify({ type: 'resize', rows: 50, cols: 120 }));
  ws.send(Buffer.from(script), { binary: true });
});
ws.on('close', (code) => {
  process.stdout.write(JSON.stringify({ code, output: Buffer.concat(output).toString('utf8'), messages }));
});
