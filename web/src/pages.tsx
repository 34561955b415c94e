/** Dashboard, image, kernel and operation pages, and the create-VM, pull and prune forms. */
import { useState } from 'preact/hooks';
import { api, createVm, formatAge, formatBytes, get, type Image, type Kernel, type Operation, seg, type Vm, type VmStats } from './api.js';
import { navigate } from './router.js';
import { ErrorNote, OperationView, StateBadge, useOperation, usePoll } from './ui.js';

const POLL_MS = 2000;

/** Live CPU/RSS of every running VM, asked together each poll. */
async function loadStats(vms: Vm[], signal: AbortSignal): Promise<Record<string, VmStats>> {
  const running = vms.filter((v) => v.state === 'running');
  const pairs = await Promise.all(
    running.map((v) =>
      get<VmStats>(`/vms/${seg(v.name)}/stats`, signal).then(
        (s) => [v.id, s] as const,
        () => null,
      ),
    ),
  );
  return Object.fromEntries(pairs.filter((p) => p !== null));
}

export function Dashboard() {
  const vms = usePoll(async (signal) => {
    const list = (await get<{ vms: Vm[] }>('/vms', signal)).vms;
    return { list, stats: await loadStats(list, signal) };
  }, POLL_MS);
  const images = usePoll(async (signal) => (await get<{ images: Image[] }>('/images', signal)).images, 10_000);
  const kernels = usePoll(async (signal) => (await get<{ kernels: Kernel[] }>('/kernels', signal)).kernels, 10_000);
  const ops = usePoll(async (signal) => (await get<{ operations: Operation[] }>('/operations', signal)).operations, POLL_MS);
  return (
    <>
      <h1>Dashboard</h1>
      <section aria-labelledby="vms-h">
        <div class="section-head">
          <h2 id="vms-h">VMs</h2>
          <a class="button" href="/new">
            New VM
          </a>
        </div>
        <ErrorNote error={vms.error} />
        {vms.data ? <VmTable vms={vms.data.list} stats={vms.data.stats} /> : <p>Loading…</p>}
      </section>
      <section aria-labelledby="ops-h">
        <h2 id="ops-h">Operations</h2>
        <ErrorNote error={ops.error} />
        {ops.data ? <OperationTable ops={ops.data} /> : null}
      </section>
      <div class="columns">
        <section aria-labelledby="images-h">
          <div class="section-head">
            <h2 id="images-h">Images</h2>
            <a class="button" href="/pull">
              Pull image
            </a>
          </div>
          <ErrorNote error={images.error} />
          {images.data ? (
            <table>
              <caption class="sr-only">Images</caption>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Kernel</th>
                  <th scope="col">Size</th>
                </tr>
              </thead>
              <tbody>
                {images.data.map((i) => (
                  <tr key={i.id}>
                    <td>
                      <a href={`/images/${seg(i.name)}`}>{i.name}</a>
                    </td>
                    <td>{i.kernelName}</td>
                    <td>{formatBytes(i.sizeBytes)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : null}
        </section>
        <section aria-labelledby="kernels-h">
          <h2 id="kernels-h">Kernels</h2>
          <ErrorNote error={kernels.error} />
          {kernels.data ? (
            <table>
              <caption class="sr-only">Kernels</caption>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Version</th>
                  <th scope="col">Size</th>
                </tr>
              </thead>
              <tbody>
                {kernels.data.map((k) => (
                  <tr key={k.id}>
                    <td>
                      <a href={`/kernels/${seg(k.name)}`}>{k.name}</a>
                    </td>
                    <td>{k.version}</td>
                    <td>{formatBytes(k.sizeBytes)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : null}
        </section>
      </div>
    </>
  );
}

function VmTable({ vms, stats }: { vms: Vm[]; stats: Record<string, VmStats> }) {
  if (vms.length === 0) return <p>No VMs yet.</p>;
  return (
    <table class="vms">
      <caption class="sr-only">Virtual machines</caption>
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">State</th>
          <th scope="col">Address</th>
          <th scope="col">NAT</th>
          <th scope="col">Image</th>
          <th scope="col">vCPUs</th>
          <th scope="col">Memory</th>
          <th scope="col">CPU</th>
          <th scope="col">RSS</th>
        </tr>
      </thead>
      <tbody>
        {vms.map((v) => {
          const s = stats[v.id]?.vmm;
          return (
            <tr key={v.id} data-vm={v.name}>
              <td>
                <a href={`/vms/${seg(v.name)}`}>{v.name}</a>
              </td>
              <td>
                <StateBadge state={v.state} />
              </td>
              <td>
                {v.name}.vm{v.ip ? <span class="muted"> {v.ip}</span> : null}
              </td>
              <td>{v.nat ? 'on' : 'off'}</td>
              <td>{v.imageName}</td>
              <td>{v.vcpus}</td>
              <td>{v.memoryMib} MiB</td>
              <td class="num">{s ? `${s.cpuPercent.toFixed(1)}%` : '—'}</td>
              <td class="num">{s ? formatBytes(s.rssBytes) : '—'}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function OperationTable({ ops }: { ops: Operation[] }) {
  const shown = [...ops]
    .sort((a, b) => (a.state === 'running' ? 0 : 1) - (b.state === 'running' ? 0 : 1) || b.createdAt.localeCompare(a.createdAt))
    .slice(0, 15);
  if (shown.length === 0) return <p>No operations yet.</p>;
  return (
    <table>
      <caption class="sr-only">Running and recent operations</caption>
      <thead>
        <tr>
          <th scope="col">Operation</th>
          <th scope="col">Kind</th>
          <th scope="col">Target</th>
          <th scope="col">State</th>
          <th scope="col">Stage</th>
          <th scope="col">Started</th>
        </tr>
      </thead>
      <tbody>
        {shown.map((o) => (
          <tr key={o.id}>
            <td>
              <a href={`/ops/${seg(o.id)}`}>{o.id}</a>
            </td>
            <td>{o.kind}</td>
            <td>{o.target ?? ''}</td>
            <td>
              <StateBadge state={o.state} />
            </td>
            <td>{o.stages.at(-1)?.name ?? ''}</td>
            <td>{formatAge(o.createdAt)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Field({ label, children }: { label: string; children: preact.ComponentChildren }) {
  return (
    // biome-ignore lint/a11y/noLabelWithoutControl: the control is the child, which the label wraps
    <label class="field">
      <span>{label}</span>
      {children}
    </label>
  );
}

export function CreateVmPage() {
  const images = usePoll(async (signal) => (await get<{ images: Image[] }>('/images', signal)).images, 0);
  const [form, setForm] = useState({ image: new URLSearchParams(location.search).get('image') ?? '', name: '', vcpus: '', memoryMib: '', nat: false });
  const [opId, setOpId] = useState<string>();
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const op = useOperation(opId);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    setBusy(true);
    try {
      const req = {
        ...(form.image ? { image: form.image } : {}),
        ...(form.name ? { name: form.name } : {}),
        ...(form.vcpus ? { vcpus: Number(form.vcpus) } : {}),
        ...(form.memoryMib ? { memoryMib: Number(form.memoryMib) } : {}),
        nat: form.nat,
      };
      setOpId((await createVm(req)).operation.id);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const created = op?.state === 'succeeded' ? (op.result as { name?: string } | undefined)?.name : undefined;
  return (
    <>
      <h1>New VM</h1>
      <form onSubmit={submit} aria-label="Create a VM">
        <Field label="Image">
          <select value={form.image} onChange={(e) => setForm({ ...form, image: e.currentTarget.value })}>
            <option value="">default image</option>
            {images.data?.map((i) => (
              <option key={i.id} value={i.name}>
                {i.name}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Name">
          <input
            value={form.name}
            placeholder="generated"
            pattern="[a-z0-9][a-z0-9._\-]*"
            maxLength={63}
            onInput={(e) => setForm({ ...form, name: e.currentTarget.value })}
          />
        </Field>
        <Field label="vCPUs">
          <input type="number" min={1} max={64} value={form.vcpus} placeholder="default" onInput={(e) => setForm({ ...form, vcpus: e.currentTarget.value })} />
        </Field>
        <Field label="Memory (MiB)">
          <input
            type="number"
            min={128}
            step={128}
            value={form.memoryMib}
            placeholder="default"
            onInput={(e) => setForm({ ...form, memoryMib: e.currentTarget.value })}
          />
        </Field>
        <label class="check">
          <input type="checkbox" checked={form.nat} onChange={(e) => setForm({ ...form, nat: e.currentTarget.checked })} /> NAT (internet access)
        </label>
        <button type="submit" disabled={busy || op?.state === 'running'}>
          Create
        </button>
      </form>
      <ErrorNote error={error} />
      {op ? <OperationView op={op} /> : null}
      {created ? (
        <p>
          Created <a href={`/vms/${seg(created)}`}>{created}</a>.
        </p>
      ) : null}
    </>
  );
}

export function PullImagePage() {
  const catalog = usePoll(
    async (signal) => (await get<{ images: Array<{ name: string; description: string; pulled: boolean }> }>('/image-catalog', signal)).images,
    0,
  );
  const [ref, setRef] = useState('');
  const [name, setName] = useState('');
  const [opId, setOpId] = useState<string>();
  const [error, setError] = useState<unknown>();
  const [pruned, setPruned] = useState<string>();
  const op = useOperation(opId);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    try {
      const r = await api<{ operation: Operation }>('POST', '/images/pull', { ref, ...(name ? { name } : {}) });
      setOpId(r.operation.id);
    } catch (err) {
      setError(err);
    }
  };
  const prune = async () => {
    setError(undefined);
    try {
      const r = await api<{ removed: number; freedBytes: number }>('POST', '/image-cache/prune', { dryRun: false });
      setPruned(`Removed ${r.removed} cached blobs, freed ${formatBytes(r.freedBytes)}.`);
    } catch (err) {
      setError(err);
    }
  };
  return (
    <>
      <h1>Pull an image</h1>
      <form onSubmit={submit} aria-label="Pull an image">
        <Field label="Reference or catalog name">
          <input
            required
            value={ref}
            list="catalog"
            maxLength={512}
            placeholder="debian-bookworm or docker.io/library/debian:12"
            onInput={(e) => setRef(e.currentTarget.value)}
          />
        </Field>
        <datalist id="catalog">
          {catalog.data?.map((c) => (
            <option key={c.name} value={c.name}>
              {c.description}
            </option>
          ))}
        </datalist>
        <Field label="Name (optional)">
          <input value={name} maxLength={63} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <button type="submit" disabled={op?.state === 'running'}>
          Pull
        </button>
      </form>
      <ErrorNote error={error} />
      {op ? <OperationView op={op} /> : null}
      <section aria-labelledby="prune-h">
        <h2 id="prune-h">Prune</h2>
        <p>Remove cached image layers no image uses.</p>
        <button type="button" onClick={prune}>
          Prune image cache
        </button>
        <PruneVms />
        {pruned ? <p role="status">{pruned}</p> : null}
      </section>
    </>
  );
}

function PruneVms() {
  const [msg, setMsg] = useState<string>();
  const [error, setError] = useState<unknown>();
  const run = async () => {
    setError(undefined);
    try {
      const r = await api<{ pruned: Array<{ name: string }> }>('POST', '/vms/prune', { dryRun: false });
      setMsg(r.pruned.length ? `Removed stopped VMs: ${r.pruned.map((p) => p.name).join(', ')}` : 'No stopped VMs to remove.');
    } catch (err) {
      setError(err);
    }
  };
  return (
    <>
      {' '}
      <button type="button" onClick={run}>
        Prune stopped VMs
      </button>
      <ErrorNote error={error} />
      {msg ? <p role="status">{msg}</p> : null}
    </>
  );
}

function Details({ rows }: { rows: Array<[string, preact.ComponentChildren]> }) {
  return (
    <dl class="details">
      {rows.map(([k, v]) => (
        <div key={k}>
          <dt>{k}</dt>
          <dd>{v}</dd>
        </div>
      ))}
    </dl>
  );
}

export { Details };

export function ImagePage({ name }: { name: string }) {
  const img = usePoll((signal) => get<Image>(`/images/${seg(name)}`, signal), 0, [name]);
  const i = img.data;
  return (
    <>
      <h1>Image {name}</h1>
      <ErrorNote error={img.error} />
      {i ? (
        <Details
          rows={[
            ['ID', i.id],
            ['Kernel', <a href={`/kernels/${seg(i.kernelName)}`}>{i.kernelName}</a>],
            ['Size', formatBytes(i.sizeBytes)],
            ['Source', i.source],
            ['Digest', i.digest ?? '—'],
            ['Managed', i.managed ? 'yes' : 'no'],
            ['systemd', i.hasSystemd ? 'yes' : 'no'],
            ['sshd', i.hasSshd ? 'yes' : 'no'],
            ['Root filesystem', i.rootfsPath],
            ['Created', `${i.createdAt} (${formatAge(i.createdAt)})`],
          ]}
        />
      ) : null}
      <p>
        <a class="button" href={`/new?image=${seg(name)}`}>
          New VM from this image
        </a>
      </p>
    </>
  );
}

export function KernelPage({ name }: { name: string }) {
  const k = usePoll((signal) => get<Kernel>(`/kernels/${seg(name)}`, signal), 0, [name]);
  const d = k.data;
  return (
    <>
      <h1>Kernel {name}</h1>
      <ErrorNote error={k.error} />
      {d ? (
        <Details
          rows={[
            ['ID', d.id],
            ['Version', d.version],
            ['Size', formatBytes(d.sizeBytes)],
            ['Source', d.source],
            ['Managed', d.managed ? 'yes' : 'no'],
            ['Kernel', d.kernelPath],
            ['initrd', d.initrdPath ?? '—'],
            ['Modules', d.modulesDir ?? '—'],
            ['Created', `${d.createdAt} (${formatAge(d.createdAt)})`],
          ]}
        />
      ) : null}
    </>
  );
}

export function OperationPage({ id }: { id: string }) {
  const op = useOperation(id);
  const [error, setError] = useState<unknown>();
  const cancel = async () => {
    try {
      await api('POST', `/operations/${seg(id)}/cancel`);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <>
      <h1>Operation {id}</h1>
      <ErrorNote error={error} />
      {op ? (
        <>
          <OperationView op={op} />
          {op.state === 'running' ? (
            <button type="button" onClick={cancel}>
              Cancel operation
            </button>
          ) : null}
        </>
      ) : (
        <p>Loading…</p>
      )}
    </>
  );
}

export function NotFound() {
  return (
    <>
      <h1>Not found</h1>
      <p>
        Nothing here. <a href="/">Back to the dashboard</a>.
      </p>
      <button type="button" onClick={() => navigate('/')}>
        Dashboard
      </button>
    </>
  );
}
