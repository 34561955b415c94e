/** Small shared pieces: polling, error display, the confirmation dialog, an operation's progress. */
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, followOperation, type Operation } from './api.js';

/** Calls `load` now and every `everyMs` while mounted (the API has no stream for these). */
export function usePoll<T>(
  load: (signal: AbortSignal) => Promise<T>,
  everyMs: number,
  deps: unknown[] = [],
): { data?: T; error?: unknown; reload: () => void } {
  const [state, setState] = useState<{ data?: T; error?: unknown }>({});
  const [tick, setTick] = useState(0);
  useEffect(() => {
    const ctl = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      try {
        const data = await load(ctl.signal);
        if (!ctl.signal.aborted) setState({ data });
      } catch (error) {
        if (!ctl.signal.aborted) setState((s) => ({ ...s, error }));
      }
      if (!ctl.signal.aborted && everyMs > 0) timer = setTimeout(run, everyMs);
    };
    void run();
    return () => {
      ctl.abort();
      clearTimeout(timer);
    };
  }, [...deps, tick]);
  return { ...state, reload: () => setTick((t) => t + 1) };
}

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  const e = error instanceof ApiError ? error : undefined;
  return (
    <p class="error" role="alert">
      {e ? e.message : String(error)}
      {e?.fix ? <span class="fix"> — {e.fix}</span> : null}
    </p>
  );
}

export function StateBadge({ state }: { state: string }) {
  return <span class={`badge state-${state}`}>{state}</span>;
}

/** An in-page confirmation dialog (a real <dialog>: focus is trapped, Escape cancels). */
export function ConfirmDialog(props: {
  open: boolean;
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (props.open && !d.open) d.showModal();
    if (!props.open && d.open) d.close();
  }, [props.open]);
  return (
    <dialog ref={ref} aria-labelledby="confirm-title" onCancel={props.onCancel} onClose={props.onCancel}>
      <h2 id="confirm-title">{props.title}</h2>
      <div>{props.children}</div>
      <div class="buttons">
        <button type="button" onClick={props.onCancel}>
          Cancel
        </button>
        <button type="button" class="danger" onClick={props.onConfirm}>
          {props.confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

/** Follows an operation live (stages, progress, log lines) until it ends. */
export function useOperation(id: string | undefined): Operation | undefined {
  const [op, setOp] = useState<Operation>();
  useEffect(() => {
    setOp(undefined);
    if (!id) return;
    return followOperation(id, setOp);
  }, [id]);
  return op;
}

export function OperationView({ op, compact = false }: { op: Operation; compact?: boolean }) {
  const p = op.progress;
  const logRef = useRef<HTMLPreElement>(null);
  useEffect(() => {
    const el = logRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [op.log?.length]);
  return (
    <section class="operation" aria-label={`operation ${op.kind}`}>
      <p>
        <StateBadge state={op.state} /> <strong>{op.kind}</strong> {op.target ? <span>{op.target}</span> : null}{' '}
        <a href={`/ops/${encodeURIComponent(op.id)}`}>{op.id}</a>
      </p>
      {p ? (
        <p>
          <progress aria-label="progress" max={p.total ?? undefined} value={p.current} /> {p.current}
          {p.total !== undefined ? ` / ${p.total}` : ''} {p.unit}
        </p>
      ) : null}
      <ol class="stages" aria-label="stages">
        {op.stages.map((s) => (
          <li key={`${s.name}@${s.startedAt}`} class={s.endedAt ? 'done' : 'running'}>
            {s.endedAt ? '✓' : '…'} {s.name}
            {s.detail ? <span class="muted"> {s.detail}</span> : null}
            {s.endedAt ? <span class="muted"> {((Date.parse(s.endedAt) - Date.parse(s.startedAt)) / 1000).toFixed(1)}s</span> : null}
          </li>
        ))}
      </ol>
      {op.error ? (
        <p class="error" role="alert">
          {op.error.message}
          {op.error.fix ? <span class="fix"> — {op.error.fix}</span> : null}
        </p>
      ) : null}
      {!compact && op.log?.length ? (
        // biome-ignore lint/a11y/noNoninteractiveTabindex: a scrollable region must be reachable by keyboard (axe scrollable-region-focusable)
        <pre class="log" ref={logRef} role="log" aria-label="operation log" tabIndex={0}>
          {op.log.join('\n')}
        </pre>
      ) : null}
    </section>
  );
}
