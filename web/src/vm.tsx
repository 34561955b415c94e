/** The VM page: details, actions, live console, stats chart, ports, processes, workspace, terminal. */
import { useEffect, useRef, useState } from 'preact/hooks';
import {
  api,
  formatAge,
  formatBytes,
  type GuestPorts,
  get,
  type Proc,
  seg,
  streamText,
  type Vm,
  type VmAction,
  type VmStats,
  vmAction,
  type WorkspaceStatus,
} from './api.js';
import { Details } from './pages.js';
import { navigate } from './router.js';
import { ConfirmDialog, ErrorNote, StateBadge, usePoll } from './ui.js';

const CONSOLE_MAX_CHARS = 256 * 1024;

/**
 * The console is shown as plain text: terminal escape sequences (colours, cursor moves) and other
 * control characters are dropped, tabs and newlines kept. A sequence split across two chunks may
 * leave a few visible characters; it is text either way, never markup.
 */
const CONSOLE_NOISE = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f]/g;
export const plainConsole = (s: string): string => s.replace(/\r\n/g, '\n').replace(CONSOLE_NOISE, '');
const STATS_SAMPLES = 90;

export function VmPage({ name }: { name: string }) {
  const vm = usePoll((signal) => get<Vm>(`/vms/${seg(name)}`, signal), 2000, [name]);
  const v = vm.data;
  const running = v?.state === 'running';
  return (
    <>
      <h1>
        VM {name} {v ? <StateBadge state={v.state} /> : null}
      </h1>
      <ErrorNote error={vm.error} />
      {v ? (
        <>
          <Actions vm={v} onChanged={vm.reload} />
          <div class="columns">
            <section aria-labelledby="details-h">
              <h2 id="details-h">Details</h2>
              <Details
                rows={[
                  ['Address', `${v.name}.vm${v.ip ? ` (${v.ip})` : ''}`],
                  ['Image', <a href={`/images/${seg(v.imageName)}`}>{v.imageName}</a>],
                  ['Kernel', <a href={`/kernels/${seg(v.kernelName)}`}>{v.kernelName}</a>],
                  ['vCPUs', String(v.vcpus)],
                  ['Memory', `${v.memoryMib} MiB`],
                  ['Disk', formatBytes(v.diskSizeBytes)],
                  ['VMM', `${v.vmm}${v.accel ? ` (${v.accel})` : ''}`],
                  ['Started', v.startedAt ? formatAge(v.startedAt) : '—'],
                  ['Created', formatAge(v.createdAt)],
                  ['Last error', v.lastError ?? '—'],
                ]}
              />
            </section>
            <StatsChart vm={v.name} running={running} />
          </div>
          {running ? <Ports vm={v.name} ip={v.ip} /> : null}
          {running ? <Processes vm={v.name} /> : null}
          {v.workspace ? <Workspace vm={v.name} /> : null}
          <Console vm={v.name} state={v.state} />
          {running ? <TerminalToggle vm={v.name} /> : null}
        </>
      ) : null}
    </>
  );
}

function Actions({ vm, onChanged }: { vm: Vm; onChanged: () => void }) {
  const [confirm, setConfirm] = useState<VmAction>();
  const [busy, setBusy] = useState<string>();
  const [error, setError] = useState<unknown>();
  const run = async (action: VmAction) => {
    setConfirm(undefined);
    setError(undefined);
    setBusy(action);
    try {
      await vmAction(action, vm.name);
      if (action === 'delete') navigate('/');
      else onChanged();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(undefined);
    }
  };
  const setNat = async (nat: boolean) => {
    setError(undefined);
    try {
      await api<Vm>('PATCH', `/vms/${seg(vm.name)}`, { nat });
      onChanged();
    } catch (e) {
      setError(e);
    }
  };
  const up = vm.state === 'running' || vm.state === 'starting' || vm.state === 'paused';
  // A start of a paused or suspended VM resumes it (docs/snapshots.md).
  const held = vm.state === 'paused' || vm.state === 'suspended';
  return (
    <section aria-label="Actions" class="actions">
      <button type="button" disabled={!!busy || (up && !held)} onClick={() => run('start')}>
        {held ? 'Resume' : 'Start'}
      </button>
      <button type="button" disabled={!!busy || !up} onClick={() => run('stop')}>
        Stop
      </button>
      <button type="button" disabled={!!busy || !up} onClick={() => run('restart')}>
        Restart
      </button>
      <button type="button" class="danger" disabled={!!busy || !up} onClick={() => setConfirm('kill')}>
        Kill
      </button>
      <button type="button" class="danger" disabled={!!busy} onClick={() => setConfirm('delete')}>
        Delete
      </button>
      <label class="check">
        <input type="checkbox" checked={vm.nat} onChange={(e) => setNat(e.currentTarget.checked)} /> NAT
      </label>
      {busy ? (
        <span role="status" class="muted">
          {busy}…
        </span>
      ) : null}
      <ErrorNote error={error} />
      <ConfirmDialog
        open={confirm !== undefined}
        title={confirm === 'delete' ? `Delete ${vm.name}?` : `Kill ${vm.name}?`}
        confirmLabel={confirm === 'delete' ? 'Delete VM' : 'Kill VM'}
        onConfirm={() => confirm && run(confirm)}
        onCancel={() => setConfirm(undefined)}
      >
        {confirm === 'delete' ? (
          <p>The VM and its disk are removed. This cannot be undone.</p>
        ) : (
          <p>The VM is stopped at once, without a clean shutdown; unsaved data in the guest is lost.</p>
        )}
      </ConfirmDialog>
    </section>
  );
}

function Console({ vm, state }: { vm: string; state: string }) {
  const [text, setText] = useState('');
  const [error, setError] = useState<unknown>();
  const pre = useRef<HTMLPreElement>(null);
  const stick = useRef(true);
  useEffect(() => {
    const ctl = new AbortController();
    setText('');
    setError(undefined);
    streamText(`/vms/${seg(vm)}/logs?lines=200&follow=true`, (chunk) => setText((t) => (t + plainConsole(chunk)).slice(-CONSOLE_MAX_CHARS)), ctl.signal).catch(
      (e: unknown) => {
        if (!ctl.signal.aborted) setError(e);
      },
    );
    return () => ctl.abort();
    // A start or restart begins a new console: follow again when the state changes.
  }, [vm, state === 'running']);
  useEffect(() => {
    const el = pre.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [text]);
  return (
    <section aria-labelledby="console-h">
      <h2 id="console-h">Serial console</h2>
      <ErrorNote error={error} />
      <pre
        class="console"
        role="log"
        ref={pre}
        // biome-ignore lint/a11y/noNoninteractiveTabindex: a scrollable region must be reachable by keyboard (axe scrollable-region-focusable)
        tabIndex={0}
        aria-label="serial console output"
        onScroll={(e) => {
          const el = e.currentTarget;
          stick.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
        }}
      >
        {text}
      </pre>
    </section>
  );
}

function StatsChart({ vm, running }: { vm: string; running: boolean }) {
  const [samples, setSamples] = useState<Array<{ t: number; cpu: number; rss: number }>>([]);
  // A stopped VM has no stats: its old numbers would only mislead.
  useEffect(() => {
    if (!running) setSamples([]);
  }, [running]);
  const poll = usePoll(
    async (signal) => {
      if (!running) return null;
      const s = await get<VmStats>(`/vms/${seg(vm)}/stats`, signal);
      if (s.vmm) {
        const vmm = s.vmm;
        setSamples((xs) => [...xs, { t: Date.now(), cpu: vmm.cpuPercent, rss: vmm.rssBytes }].slice(-STATS_SAMPLES));
      }
      return s;
    },
    2000,
    [vm, running],
  );
  const last = samples.at(-1);
  const W = 300;
  const H = 80;
  const maxCpu = Math.max(100, ...samples.map((s) => s.cpu));
  const maxRss = Math.max(1, ...samples.map((s) => s.rss));
  const line = (f: (s: { cpu: number; rss: number }) => number, max: number) =>
    samples.map((s, i) => `${((i / Math.max(1, samples.length - 1)) * W).toFixed(1)},${(H - (f(s) / max) * (H - 4) - 2).toFixed(1)}`).join(' ');
  const guest = poll.data?.guest;
  return (
    <section aria-labelledby="stats-h">
      <h2 id="stats-h">Stats</h2>
      <ErrorNote error={poll.error} />
      {last ? (
        <>
          <p>
            <span class="cpu">CPU {last.cpu.toFixed(1)}%</span> · <span class="rss">RSS {formatBytes(last.rss)}</span>
            {guest ? (
              <span class="muted">
                {' '}
                · load {guest.load1.toFixed(2)} · guest memory free {formatBytes(guest.memAvailableKib * 1024)} of {formatBytes(guest.memTotalKib * 1024)}
              </span>
            ) : null}
          </p>
          <svg
            class="chart"
            viewBox={`0 0 ${W} ${H}`}
            preserveAspectRatio="none"
            role="img"
            aria-label={`CPU and memory over the last ${samples.length} samples`}
          >
            <rect x="0" y="0" width={W} height={H} class="chart-bg" />
            <polyline points={line((s) => s.cpu, maxCpu)} class="line-cpu" fill="none" vector-effect="non-scaling-stroke" />
            <polyline points={line((s) => s.rss, maxRss)} class="line-rss" fill="none" vector-effect="non-scaling-stroke" />
          </svg>
        </>
      ) : (
        <p class="muted">{running ? 'Collecting…' : 'Not running.'}</p>
      )}
    </section>
  );
}

function Ports({ vm, ip }: { vm: string; ip: string | null }) {
  const ports = usePoll((signal) => get<GuestPorts>(`/vms/${seg(vm)}/ports`, signal), 5000, [vm]);
  return (
    <section aria-labelledby="ports-h">
      <h2 id="ports-h">Ports</h2>
      <ErrorNote error={ports.error} />
      {ports.data ? (
        ports.data.ports.length ? (
          <table>
            <caption class="sr-only">Listening ports</caption>
            <thead>
              <tr>
                <th scope="col">Port</th>
                <th scope="col">Protocol</th>
                <th scope="col">Address</th>
                <th scope="col">Process</th>
                <th scope="col">Open</th>
              </tr>
            </thead>
            <tbody>
              {ports.data.ports.map((p) => (
                <tr key={`${p.proto}/${p.address}/${p.port}`}>
                  <td>{p.port}</td>
                  <td>{p.proto}</td>
                  <td>{p.address}</td>
                  <td>{p.command}</td>
                  <td>{p.url ? <PortLink url={p.url} ip={ip} port={p.port} /> : <span class="muted">{p.endpoint ?? ''}</span>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : (
          <p>Nothing listens.</p>
        )
      ) : (
        <p class="muted">Probing…</p>
      )}
      {ports.data?.note ? <p class="muted">{ports.data.note}</p> : null}
    </section>
  );
}

/**
 * The daemon's url names `<vm>.vm`, which only a host using banger's DNS resolves: the link goes to
 * the VM's IP instead, with the scheme the daemon's probe found. Only http(s) become links.
 */
function PortLink({ url, ip, port }: { url: string; ip: string | null; port: number }) {
  let u: URL;
  try {
    u = new URL(url);
    if (ip && /^[0-9.]+$/.test(ip)) u = new URL(`${u.protocol}//${ip}:${port}/`);
  } catch {
    return <span>{url}</span>;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return <span>{url}</span>;
  return (
    <a href={u.href} target="_blank" rel="noopener noreferrer" class="port-link">
      {u.href}
    </a>
  );
}

function Processes({ vm }: { vm: string }) {
  const procs = usePoll(async (signal) => (await get<{ procs: Proc[] }>(`/vms/${seg(vm)}/procs`, signal)).procs, 5000, [vm]);
  return (
    <section aria-labelledby="procs-h">
      <h2 id="procs-h">Processes</h2>
      <ErrorNote error={procs.error} />
      {procs.data?.length ? (
        <table>
          <caption class="sr-only">Processes started through banger</caption>
          <thead>
            <tr>
              <th scope="col">ID</th>
              <th scope="col">Name</th>
              <th scope="col">Command</th>
              <th scope="col">State</th>
              <th scope="col">Exit</th>
              <th scope="col">Output</th>
            </tr>
          </thead>
          <tbody>
            {procs.data.map((p) => (
              <tr key={p.id}>
                <td class="id">{p.id}</td>
                <td>{p.name ?? ''}</td>
                <td>
                  <code>{p.argv ? p.argv.join(' ') : (p.shell ?? '')}</code>
                  {p.pty ? <span class="muted"> (pty)</span> : null}
                </td>
                <td>
                  <StateBadge state={p.state} />
                </td>
                <td>{p.exitCode ?? (p.signal ? `SIG${p.signal}` : '')}</td>
                <td>{formatBytes(p.stdoutBytes + p.stderrBytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : procs.data ? (
        <p>No processes.</p>
      ) : null}
    </section>
  );
}

function Workspace({ vm }: { vm: string }) {
  const ws = usePoll((signal) => get<WorkspaceStatus>(`/vms/${seg(vm)}/workspace`, signal), 10_000, [vm]);
  const w = ws.data;
  return (
    <section aria-labelledby="ws-h">
      <h2 id="ws-h">Workspace</h2>
      <ErrorNote error={ws.error} />
      {w ? (
        <Details
          rows={[
            ['Host repository', w.workspace.hostPath],
            ['Guest path', w.workspace.guestPath],
            ['Base', w.workspace.baseCommit.slice(0, 12)],
            ['Guest HEAD', w.guestHead.slice(0, 12)],
            ['Guest commits', String(w.guestCommits)],
            ['Uncommitted changes', String(w.changesTotal)],
            ['Host moved', w.hostMoved ? `yes${w.hostCommitsSinceBase !== null ? ` (${w.hostCommitsSinceBase} commits)` : ''}` : 'no'],
          ]}
        />
      ) : null}
    </section>
  );
}

/** xterm.js is most of the bundle: loaded on first use only. */
let terminalModule: Promise<typeof import('./terminal.js')> | undefined;

function TerminalToggle({ vm }: { vm: string }) {
  const [open, setOpen] = useState(false);
  const [View, setView] = useState<typeof import('./terminal.js')['TerminalView']>();
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    if (!open || View) return;
    terminalModule ??= import('./terminal.js');
    terminalModule.then((m) => setView(() => m.TerminalView)).catch(setError);
  }, [open, View]);
  return open ? (
    <>
      <ErrorNote error={error} />
      {View ? <View vm={vm} /> : <p class="muted">Loading the terminal…</p>}
      <button type="button" onClick={() => setOpen(false)}>
        Close terminal
      </button>
    </>
  ) : (
    <section aria-label="Terminal">
      <button type="button" onClick={() => setOpen(true)}>
        Open terminal
      </button>
    </section>
  );
}
