import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import type { Vm } from '../../src/api/schemas.js';
import { guestAssets, ROOT, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * The web UI end to end in a real browser: Debian's headless Chromium driven by playwright-core
 * (no browser download), against a real daemon and one real VM (QEMU), everything inside the
 * test's network namespace — the daemon's web listener is on that namespace's loopback and the
 * browser runs there too, so the port link reaches the guest. The VM is created through the UI
 * (live progress) and used by every later step; the last one deletes it through the UI.
 *
 * Artifacts: a screenshot of each page under a kept temp dir (its path is printed); each is checked
 * (a real PNG of some size, the page's key text present). Accessibility smoke: axe-core finds no
 * critical or serious violation on the dashboard and the VM page.
 */
const CHROMIUM = '/usr/bin/chromium';
const VM = 'webvm';
const assets = guestAssets();
const require = createRequire(import.meta.url);

const skip =
  requires(assets, 'guest assets missing: run scripts/guest-assets.sh') ||
  requires(existsSync(CHROMIUM), `${CHROMIUM} missing: install Debian's chromium package (scripts/install-deps.sh --test)`) ||
  requires(existsSync(join(ROOT, 'dist', 'web', 'index.html')), 'dist/web missing: npm run build bundles the web UI');

/**
 * A one-line HTTP server in the guest (the test rootfs has perl-base, not python3). It answers
 * after one read, whatever came (the daemon's port probe tries TLS first), and ignores SIGPIPE.
 */
const HTTP_SERVER = [
  'use IO::Socket::INET; $SIG{PIPE} = "IGNORE";',
  '$s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die $!;',
  'while ($c = $s->accept) { sysread($c, $b, 65536);',
  ' print $c "HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\nConnection: close\\r\\n\\r\\nhello from the guest\\n"; close $c }',
].join('');

describe('web UI in a real browser', { skip }, () => {
  let home: TestHome;
  let artifacts: string;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let createOpId = '';

  before(async () => {
    home = await TestHome.create(
      ['accel = "tcg"', 'web_listen_addr = "127.0.0.1:0"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'),
      { netns: true },
    );
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    artifacts = await mkdtemp('/tmp/banger-web-ui-');
    // The browser joins the namespace (its loopback carries the web listener, its bridge the guest).
    const wrapper = join(home.dir, 'chromium-in-netns');
    await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${home.netns} ${CHROMIUM} "$@"\n`);
    await chmod(wrapper, 0o755);
    browser = await chromium.launch({ executablePath: wrapper, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
    context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
    page = await context.newPage();
  });
  after(async () => {
    await browser?.close().catch(() => {});
    await home?.destroy();
  });

  /** Saves the page, checks the PNG is real and the page shows what it should. */
  async function screenshot(name: string, keyTexts: Array<string | RegExp>): Promise<string> {
    const file = join(artifacts, `${name}.png`);
    const png = await page.screenshot({ path: file, fullPage: true });
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${name}.png is a PNG`);
    assert.ok((await stat(file)).size > 10_000, `${name}.png has content`);
    const text = (await page.locator('main').textContent()) ?? '';
    for (const k of keyTexts)
      assert.match(text, typeof k === 'string' ? new RegExp(k.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : k, `${name}: "${k}" on the page`);
    return file;
  }

  async function axe(what: string): Promise<void> {
    // Through the DevTools protocol: the UI's CSP (script-src 'self') rightly refuses an injected <script>.
    await page.evaluate(await readFile(require.resolve('axe-core/axe.min.js'), 'utf8'));
    const violations = await page.evaluate(async () => {
      const r = await (
        window as unknown as { axe: { run(): Promise<{ violations: Array<{ id: string; impact: string; help: string; nodes: unknown[] }> }> } }
      ).axe.run();
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }));
    });
    const bad = violations.filter((v) => v.impact === 'critical' || v.impact === 'serious');
    assert.deepEqual(bad, [], `${what}: axe found critical/serious violations`);
  }

  test('the token URL opens a session; without it the UI answers 401', async (t) => {
    const r = await home.banger(['ui', '--url']);
    assert.equal(r.code, 0, r.stderr);
    const url = r.stdout.trim();
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/auth\?token=[0-9a-f]{64}$/);
    const base = new URL('/', url).href;
    const denied = await page.goto(base);
    assert.equal(denied?.status(), 401);
    assert.match(await page.content(), /banger ui/);
    // As `banger ui` hands the link to a browser: a local file that navigates to it (a cross-site
    // start, on which a redirect would lose the SameSite=Strict cookie).
    const handoff = join(artifacts, 'open.html');
    await writeFile(handoff, `<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${url}"><title>banger</title>\n`);
    await page.goto(`file://${handoff}`);
    await page.waitForURL((u) => u.protocol === 'http:' && u.pathname === '/' && u.hash === '');
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    await page.locator('a', { hasText: 'img' }).first().waitFor();
    const cookies = await context.cookies(base);
    const session = cookies.find((c) => c.name === 'banger_session');
    assert.ok(session?.httpOnly && session.sameSite === 'Strict', 'an HttpOnly SameSite=Strict session cookie');
    t.diagnostic(`artifacts: ${artifacts}`);
  });

  test('create a VM from the form with live progress', async () => {
    await page.getByRole('link', { name: 'New VM' }).first().click();
    await page.getByRole('heading', { name: 'New VM' }).waitFor();
    await page.getByLabel('Image').selectOption('img');
    await page.getByLabel('Name').fill(VM);
    await page.getByRole('button', { name: 'Create' }).click();
    // Live: while the operation still runs, its stages already show.
    const op = page.locator('section.operation');
    await op.locator('.badge.state-running').waitFor({ timeout: 30_000 });
    await op.locator('.stages li').first().waitFor({ timeout: 30_000 });
    await screenshot('create-vm', ['vm.create', VM]);
    await op.locator('.badge.state-succeeded').waitFor({ timeout: 110_000 });
    assert.ok((await op.locator('.stages li').count()) >= 2, 'the stages of the create are listed');
    createOpId = ((await op.locator('a[href^="/ops/"]').textContent()) ?? '').trim();
    await page.getByRole('link', { name: VM }).click();
    await page.getByRole('heading', { name: new RegExp(`VM ${VM}`) }).waitFor();
  });

  test('the dashboard lists the VM with its address and live stats', async (t) => {
    const vm = (await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms.find((v) => v.name === VM);
    assert.ok(vm?.ip, 'the VM has an IP');
    const t0 = Date.now();
    await page.goto(new URL('/', page.url()).href);
    const row = page.locator(`tr[data-vm="${VM}"]`);
    await row.waitFor();
    await row.getByText('running').waitFor();
    const loadMs = Date.now() - t0;
    await row.locator('td.num', { hasText: '%' }).waitFor({ timeout: 10_000 });
    const text = (await row.textContent()) ?? '';
    assert.match(text, new RegExp(`${VM}\\.vm`));
    assert.ok(text.includes(vm.ip as string), 'the IP is shown');
    assert.match(text, /img/);
    const nav = await page.evaluate(() => JSON.stringify(performance.getEntriesByType('navigation')[0]));
    t.diagnostic(`dashboard load (navigation to the VM row rendered): ${loadMs} ms`);
    t.diagnostic(`navigation timing: ${nav}`);
    const file = await screenshot('dashboard', ['Dashboard', VM, 'running', 'img', 'debian-cloud', 'vm.create']);
    // The README's screenshot is refreshed only when asked for.
    if (process.env.BANGER_UPDATE_SCREENSHOT === '1') {
      await mkdir(join(ROOT, 'docs', 'img'), { recursive: true });
      await copyFile(file, join(ROOT, 'docs', 'img', 'web-dashboard.png'));
    }
    await axe('dashboard');
  });

  test('VM page: the console tail follows new output, a port link opens the guest server', async () => {
    await page.getByRole('link', { name: VM, exact: true }).click();
    await page.getByRole('heading', { name: new RegExp(`VM ${VM}`) }).waitFor();
    const consoleBox = page.getByRole('log', { name: 'serial console output' });
    await consoleBox
      .getByText(/Linux version|systemd|login:/)
      .first()
      .waitFor({ timeout: 20_000 });
    // New output after the page attached: it must arrive through the open stream.
    const marker = `web-ui-console-marker-${process.pid}`;
    await home.ok(['vm', 'exec', VM, '--', 'sh', '-c', `echo ${marker} > /dev/console`]);
    await consoleBox.filter({ hasText: marker }).waitFor({ timeout: 20_000 });

    await home.ok(['vm', 'exec', VM, '-d', '--name', 'http', '--', 'perl', '-e', HTTP_SERVER]);
    const ip = (await home.json<Vm>(['vm', 'show', VM])).ip as string;
    const link = page.locator('a.port-link', { hasText: `${ip}:8080` });
    await link.waitFor({ timeout: 30_000 });
    assert.equal(await link.getAttribute('target'), '_blank');
    assert.match((await link.getAttribute('rel')) ?? '', /\bnoopener\b/);
    const [tab] = await Promise.all([context.waitForEvent('page'), link.click()]);
    await tab.waitForLoadState();
    assert.match((await tab.locator('body').textContent()) ?? '', /hello from the guest/);
    await tab.close();

    await page.getByRole('heading', { name: 'Processes' }).waitFor();
    await page.locator('text=perl').first().waitFor();
    await page.locator('svg.chart polyline').first().waitFor();
    await screenshot('vm', [VM, 'Serial console', marker, '8080', 'Processes', 'CPU']);
    await axe('VM page');
  });

  test('the terminal runs `echo hi` and shows hi', async () => {
    await page.getByRole('button', { name: 'Open terminal' }).click();
    await page.getByText(/attached to \/bin\/(bash|sh)/).waitFor({ timeout: 30_000 });
    const term = page.locator('.xterm');
    await term.click();
    await page.keyboard.type('echo hi\n');
    const rows = page.locator('.xterm-rows');
    await page.waitForFunction(
      () => {
        const lines = [...document.querySelectorAll('.xterm-rows > div')].map((d) => (d.textContent ?? '').trim());
        return lines.some((l, i) => i > 0 && l === 'hi' && (lines[i - 1] ?? '').includes('echo hi'));
      },
      undefined,
      { timeout: 30_000 },
    );
    assert.match((await rows.textContent()) ?? '', /echo hi/);
    await screenshot('terminal', ['Terminal', 'attached to']);
  });

  test('image, kernel and operation pages', async () => {
    await page.getByRole('link', { name: 'img', exact: true }).first().click();
    await page.getByRole('heading', { name: 'Image img' }).waitFor();
    await page.getByText('debian-cloud').first().waitFor();
    await screenshot('image', ['Image img', 'debian-cloud', 'Root filesystem']);
    await page.getByRole('link', { name: 'debian-cloud' }).first().click();
    await page.getByRole('heading', { name: 'Kernel debian-cloud' }).waitFor();
    await page
      .getByText((assets as NonNullable<typeof assets>).kernelVersion)
      .first()
      .waitFor();
    await screenshot('kernel', ['Kernel debian-cloud', (assets as NonNullable<typeof assets>).kernelVersion]);
    assert.ok(createOpId, 'the create operation id was seen');
    await page.goto(new URL(`/ops/${createOpId}`, page.url()).href);
    await page.locator('.badge.state-succeeded').waitFor();
    await screenshot('operation', [createOpId, 'vm.create', 'succeeded']);
  });

  test('stop, then delete only after confirming in the dialog', async () => {
    await page.goto(new URL(`/vms/${VM}`, page.url()).href);
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.locator('h1 .badge.state-stopped').waitFor({ timeout: 60_000 });
    assert.equal((await home.json<Vm>(['vm', 'show', VM])).state, 'stopped');

    await page.getByRole('button', { name: 'Delete' }).click();
    const dialog = page.getByRole('dialog', { name: `Delete ${VM}?` });
    await dialog.waitFor();
    await screenshot('delete-dialog', [VM]);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
    assert.ok(
      (await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms.some((v) => v.name === VM),
      'cancel keeps the VM',
    );

    await page.getByRole('button', { name: 'Delete' }).click();
    await dialog.getByRole('button', { name: 'Delete VM' }).click();
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    assert.equal(new URL(page.url()).pathname, '/');
    assert.ok(!(await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms.some((v) => v.name === VM), 'the VM is gone');
    await page.getByText('No VMs yet.').waitFor();
  });
});
