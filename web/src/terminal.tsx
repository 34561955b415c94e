/**
 * A shell in the VM: a PTY process started through the API (mode "detach"), then attached over the
 * bridge's WebSocket (docs/web.md): binary frames are terminal bytes both ways, text frames are
 * JSON control messages (resize and eof from us; exit and error from the server).
 */
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api, type Proc, seg, wsProtocols } from './api.js';
import { adoptInlineStyles } from './csp-styles.js';

async function startShell(vm: string, rows: number, cols: number): Promise<Proc> {
  let last: unknown;
  for (const argv of [
    ['/bin/bash', '-l'],
    ['/bin/sh', '-l'],
  ]) {
    try {
      const p = await api<Proc>('POST', `/vms/${seg(vm)}/procs`, { argv, pty: { rows, cols }, mode: 'detach' });
      if (p.code !== 'command_not_found') return p;
      last = new ApiError(404, 'command_not_found', `${argv[0]} is not in the guest`);
    } catch (e) {
      last = e;
      if (!(e instanceof ApiError && e.code === 'command_not_found')) throw e;
    }
  }
  throw last;
}

export function TerminalView({ vm }: { vm: string }) {
  const host = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState('starting a shell…');
  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 2000, screenReaderMode: false });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el);
    const stopStyles = adoptInlineStyles(el);
    fit.fit();
    let ws: WebSocket | undefined;
    let closed = false;
    const enc = new TextEncoder();
    const sendResize = () => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', rows: term.rows, cols: term.cols }));
    };
    const observer = new ResizeObserver(() => fit.fit());
    observer.observe(el);
    term.onResize(sendResize);
    term.onData((d) => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    (async () => {
      const proc = await startShell(vm, term.rows, term.cols);
      if (closed) return;
      const url = new URL(`/api/v1/vms/${seg(vm)}/procs/${seg(proc.id)}/attach`, location.href);
      url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
      ws = new WebSocket(url, wsProtocols());
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => {
        setStatus(`attached to ${proc.argv?.[0] ?? 'shell'} (process ${proc.id})`);
        sendResize();
        term.focus();
      };
      ws.onmessage = (m) => {
        if (m.data instanceof ArrayBuffer) {
          term.write(new Uint8Array(m.data));
          return;
        }
        try {
          const msg = JSON.parse(m.data as string) as { type: string; proc?: Proc; error?: { message: string } };
          if (msg.type === 'exit') setStatus(`the shell ended (exit ${msg.proc?.exitCode ?? msg.proc?.signal ?? '?'})`);
          else if (msg.type === 'error') setStatus(`error: ${msg.error?.message ?? 'unknown'}`);
        } catch {
          /* not ours */
        }
      };
      ws.onclose = (e) => {
        if (!closed) setStatus((s) => (s.startsWith('attached') ? `detached (${e.code})` : s));
      };
    })().catch((e: unknown) => setStatus(`could not start a shell: ${e instanceof Error ? e.message : String(e)}`));
    return () => {
      closed = true;
      observer.disconnect();
      ws?.close(1000);
      stopStyles();
      term.dispose();
    };
  }, [vm]);
  return (
    <section aria-labelledby="term-h" class="terminal">
      <h2 id="term-h">Terminal</h2>
      <p role="status" class="muted">
        {status}
      </p>
      <div ref={host} class="term-host" role="application" aria-label={`terminal of ${vm}`} />
    </section>
  );
}
