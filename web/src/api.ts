/**
 * The UI's only way to the daemon: the /v1 API as the daemon's web bridge serves it under /api/v1
 * on this origin (docs/web.md). The session cookie rides along (same-origin); every state-changing
 * request carries the session's CSRF token from GET /api/session.
 */
import type { Proc, ProcEvent } from '../../src/api/proc-schemas.js';
import type { GuestPorts, Image, Kernel, Operation, OperationEvent, Vm, VmAction, VmCreateRequest, VmStats } from '../../src/api/schemas.js';
import type { WorkspaceStatus } from '../../src/api/workspace-schemas.js';

export type { GuestPorts, Image, Kernel, Operation, OperationEvent, Proc, ProcEvent, Vm, VmAction, VmStats, WorkspaceStatus };

/** An API error as the daemon reports it (code, message, fix). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly fix?: string,
  ) {
    super(message);
  }
}

/**
 * The page key (docs/web.md, "Authentication"): the /auth redirect hands it over in the URL
 * fragment, which no request carries; it is kept in this origin's localStorage (another port of
 * 127.0.0.1 is another origin and cannot read it, though it would get the cookie) and sent with
 * every API request: a header, `key=` for EventSource, a WebSocket subprotocol.
 */
const KEY_STORAGE = 'banger.key';
function takeKeyFromFragment(): void {
  const m = /^#key=([0-9a-f]{64})$/.exec(location.hash);
  if (!m) return;
  localStorage.setItem(KEY_STORAGE, m[1] as string);
  history.replaceState(history.state, '', location.pathname + location.search);
}
takeKeyFromFragment();
export const pageKey = (): string => localStorage.getItem(KEY_STORAGE) ?? '';
/** `path` with the page key as a query parameter (EventSource cannot set headers). */
const withKey = (path: string): string => `${path}${path.includes('?') ? '&' : '?'}key=${encodeURIComponent(pageKey())}`;
/** What the terminal's WebSocket offers: the UI's protocol and, beside it, the key. */
export const wsProtocols = (): string[] => ['banger', `banger.key.${pageKey()}`];

let csrf: Promise<string> | undefined;

/** The session's CSRF token, asked once per page load. */
function csrfToken(): Promise<string> {
  csrf ??= fetch('/api/session', { credentials: 'same-origin', cache: 'no-store', headers: { 'x-banger-key': pageKey() } }).then(async (r) => {
    if (!r.ok) {
      csrf = undefined;
      throw await toError(r);
    }
    return ((await r.json()) as { csrf: string }).csrf;
  });
  return csrf;
}

async function toError(r: Response): Promise<ApiError> {
  let body: { error?: { code?: string; message?: string; fix?: string } } = {};
  try {
    body = (await r.json()) as typeof body;
  } catch {
    /* not JSON */
  }
  if (r.status === 401) return new ApiError(401, 'unauthorized', 'this browser has no banger session', 'run `banger ui` to open a new one');
  return new ApiError(r.status, body.error?.code ?? 'http_error', body.error?.message ?? `HTTP ${r.status}`, body.error?.fix);
}

/** Path segments from users or guests are always encoded. */
export const seg = (s: string): string => encodeURIComponent(s);

export async function api<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json', 'x-banger-key': pageKey() };
  if (method !== 'GET') headers['x-banger-csrf'] = await csrfToken();
  if (body !== undefined) headers['content-type'] = 'application/json';
  const init: RequestInit = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) init.body = JSON.stringify(body);
  if (signal) init.signal = signal;
  const r = await fetch(`/api/v1${path}`, init);
  if (!r.ok) throw await toError(r);
  return (await r.json()) as T;
}

export const get = <T>(path: string, signal?: AbortSignal): Promise<T> => api<T>('GET', path, undefined, signal);

/** Follows a server-sent event stream (GET only); returns a function that stops following. */
export function follow<E>(path: string, onEvent: (e: E) => boolean | undefined, onError?: () => void): () => void {
  const es = new EventSource(withKey(`/api/v1${path}`), { withCredentials: false });
  es.onmessage = (m) => {
    let e: E;
    try {
      e = JSON.parse(m.data as string) as E;
    } catch {
      return;
    }
    // The server ends the stream after the last event; EventSource would reconnect: close first.
    if (onEvent(e) === false) es.close();
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED || es.readyState === EventSource.CONNECTING) {
      es.close();
      onError?.();
    }
  };
  return () => es.close();
}

/** Follows an operation until its `done` event; the snapshot and each event update the caller's copy. */
export function followOperation(id: string, onUpdate: (op: Operation) => void): () => void {
  let op: Operation | undefined;
  return follow<OperationEvent>(
    `/operations/${seg(id)}/events`,
    (e) => {
      if (e.type === 'snapshot' || e.type === 'done') op = e.operation;
      else if (op && e.type === 'stage') {
        const stages = op.stages.filter((s) => !(s.name === e.stage.name && s.startedAt === e.stage.startedAt));
        op = { ...op, stages: [...stages, e.stage] };
      } else if (op && e.type === 'progress') op = { ...op, progress: e.progress };
      else if (op && e.type === 'log') op = { ...op, log: [...(op.log ?? []), e.line].slice(-500) };
      if (op) onUpdate(op);
      return e.type === 'done' ? false : undefined;
    },
    () => {
      // The stream broke (daemon restart?): one last look at the operation.
      get<Operation>(`/operations/${seg(id)}`)
        .then(onUpdate)
        .catch(() => {});
    },
  );
}

/** Streams a text body (the serial console) chunk by chunk until aborted or ended. */
export async function streamText(path: string, onText: (s: string) => void, signal: AbortSignal): Promise<void> {
  const r = await fetch(`/api/v1${path}`, { credentials: 'same-origin', cache: 'no-store', signal, headers: { 'x-banger-key': pageKey() } });
  if (!r.ok || !r.body) throw await toError(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onText(value);
  }
}

export const vmAction = (action: VmAction, ref: string) =>
  api<{ results: Array<{ ref: string; ok: boolean; error?: { code: string; message: string } }> }>('POST', '/vms/actions', { action, refs: [ref] }).then(
    (r) => {
      const bad = r.results.find((x) => !x.ok);
      if (bad) throw new ApiError(409, bad.error?.code ?? 'failed', bad.error?.message ?? `${action} failed`);
    },
  );

export const createVm = (req: VmCreateRequest) => api<{ operation: Operation }>('POST', '/vms', req);

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function formatAge(iso: string | null | undefined): string {
  if (!iso) return '—';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
