/** The banger web UI: a small single-page app over the daemon's /api/v1 bridge (docs/web.md). */
import { render } from 'preact';
import { useEffect } from 'preact/hooks';
// xterm's stylesheet lives in app.css: the terminal's code is a lazy chunk, and esbuild does not load a chunk's CSS.
import '@xterm/xterm/css/xterm.css';
import './app.css';
import { CreateVmPage, Dashboard, ImagePage, KernelPage, NotFound, OperationPage, PullImagePage } from './pages.js';
import { match, onLinkClick, usePath } from './router.js';
import { VmPage } from './vm.js';

function Page({ path }: { path: string }) {
  if (path === '/') return <Dashboard />;
  if (path === '/new') return <CreateVmPage />;
  if (path === '/pull') return <PullImagePage />;
  let m = match('/vms/:name', path);
  if (m) return <VmPage key={m.name} name={m.name as string} />;
  m = match('/images/:name', path);
  if (m) return <ImagePage key={m.name} name={m.name as string} />;
  m = match('/kernels/:name', path);
  if (m) return <KernelPage key={m.name} name={m.name as string} />;
  m = match('/ops/:id', path);
  if (m) return <OperationPage key={m.id} id={m.id as string} />;
  return <NotFound />;
}

function title(path: string): string {
  const [, kind, name] = path.split('/');
  const what: Record<string, string> = { vms: 'VM', images: 'Image', kernels: 'Kernel', ops: 'Operation', new: 'New VM', pull: 'Pull image' };
  if (!kind) return 'banger';
  return `${what[kind] ?? 'banger'}${name ? ` ${decodeURIComponent(name)}` : ''} · banger`;
}

function App() {
  const path = usePath();
  useEffect(() => {
    document.title = title(path);
    window.scrollTo(0, 0);
  }, [path]);
  const current = (href: string) => (href === '/' ? path === '/' : path.startsWith(href)) || undefined;
  return (
    // biome-ignore lint/a11y/noStaticElementInteractions: delegated link handling; the links themselves are the controls
    // biome-ignore lint/a11y/useKeyWithClickEvents: keyboard activation of a link fires click too
    <div class="app" onClick={onLinkClick}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header>
        <a class="brand" href="/">
          banger
        </a>
        <nav aria-label="Main">
          <a href="/" aria-current={current('/') && 'page'}>
            Dashboard
          </a>
          <a href="/new" aria-current={current('/new') && 'page'}>
            New VM
          </a>
          <a href="/pull" aria-current={current('/pull') && 'page'}>
            Images
          </a>
        </nav>
      </header>
      <main id="main">
        <Page path={path} />
      </main>
    </div>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
