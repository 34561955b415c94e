import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { MAX_RESULT_CHARS } from '../../src/mcp/text.js';
import { BANGER, guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';
import { git } from '../helpers/workspace-fixture.js';

/**
 * `banger mcp` driven by the official MCP client over stdio (the SDK's Client and
 * StdioClientTransport spawning the real command), against a real daemon and ONE real VM created
 * through the server itself from a host git repository: the coding loop of an agent (run the
 * tests, read, edit, rerun, diff, export a branch) checked on the host with git; a long command
 * answers with a process id; a host read outside the allowlist is refused; every result stays
 * under the cap. Per-tool latency and result size go to the diagnostics.
 */
const assets = guestAssets();

const CALC = '#!/bin/sh\nadd() { echo $(( $1 - $2 )); }\n';
const CALC_FIXED = '#!/bin/sh\nadd() { echo $(( $1 + $2 )); }\n';
const TEST_SH = '#!/bin/sh\n. ./calc.sh\nif [ "$(add 2 3)" = 5 ]; then echo "ok 1 add"; else echo "FAIL add: got $(add 2 3)"; exit 1; fi\n';

describe('banger mcp on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let tmp: string;
  let repo: string;
  let client: Client;
  let stderr = '';
  const calls: Array<{ name: string; ms: number; chars: number }> = [];

  const progress: string[] = [];
  const call = async (name: string, args: Record<string, unknown> = {}, timeout = 60_000): Promise<CallToolResult> => {
    const started = performance.now();
    const r = (await client.callTool({ name, arguments: args }, undefined, {
      timeout,
      resetTimeoutOnProgress: true,
      onprogress: (p) => void progress.push(`${name}: ${p.message ?? p.progress}`),
    })) as CallToolResult;
    const chars = JSON.stringify(r).length;
    calls.push({ name, ms: performance.now() - started, chars });
    assert.ok(chars < MAX_RESULT_CHARS, `${name}: a result of ${chars} characters`);
    return r;
  };
  const ok = async (name: string, args: Record<string, unknown> = {}, timeout?: number) => {
    const r = await call(name, args, timeout);
    assert.ok(!r.isError, `${name}: ${JSON.stringify(r.content)}\nserver stderr: ${stderr}`);
    return r.structuredContent as Record<string, unknown>;
  };

  before(async () => {
    tmp = mkdtempSync('/tmp/bg-mcp-e2e-');
    repo = join(tmp, 'repo');
    mkdirSync(repo);
    writeFileSync(join(repo, 'calc.sh'), CALC);
    writeFileSync(join(repo, 'test.sh'), TEST_SH, { mode: 0o755 });
    git(repo, 'init', '-q');
    git(repo, 'add', '-A');
    git(repo, 'commit', '-qm', 'calc with a bug');
    writeFileSync(join(tmp, 'canary.txt'), 'CANARY-OUTSIDE-THE-ALLOWLIST\n');

    home = await TestHome.create(['accel = "tcg"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'), { netns: true });
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);

    // The server starts in the repository (its default allowlist), in the home's namespace.
    const transport = new StdioClientTransport({
      command: 'ip',
      args: ['netns', 'exec', home.netns as string, process.execPath, BANGER, 'mcp'],
      env: home.env as Record<string, string>,
      cwd: repo,
      stderr: 'pipe',
    });
    transport.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    client = new Client({ name: 'banger-e2e', version: '1' });
    await client.connect(transport);
  });
  after(async () => {
    await client?.close();
    await home?.destroy();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('tools/list: the tools with input and output schemas and their annotations', async (t) => {
    const { tools } = await client.listTools();
    const listChars = JSON.stringify({ tools }).length + (client.getInstructions() ?? '').length;
    t.diagnostic(`tools/list + instructions: ${listChars} characters (≈ ${Math.round(listChars / 4)} tokens)`);
    assert.equal(tools.length, 17);
    for (const t of tools) {
      assert.equal(t.inputSchema.type, 'object', t.name);
      assert.equal(t.outputSchema?.type, 'object', t.name);
      assert.equal(Object.keys(t.annotations ?? {}).length, 4, `${t.name}: ${JSON.stringify(t.annotations)}`);
    }
    const byName = new Map(tools.map((t) => [t.name, t]));
    assert.equal(byName.get('sandbox_delete')?.annotations?.destructiveHint, true);
    assert.equal(byName.get('workspace_diff')?.annotations?.readOnlyHint, true);
    assert.deepEqual(byName.get('exec')?.inputSchema.required, ['command']);
    assert.ok(client.getInstructions()?.includes('sandbox_create'));
  });

  test('the coding loop: create from the host repo, test (fails), read, edit, test (passes), diff, export a branch; the host ref has the fix', async () => {
    const created = await ok('sandbox_create', { name: 'mcp', image: 'img', repo: '.' }, 600_000);
    assert.equal(created.name, 'mcp');
    assert.equal(created.workspace, '/root/repo');
    // The stages came as MCP progress notifications while the call ran.
    assert.ok(progress.includes('sandbox_create: prepare workspace'), progress.join(', '));

    const failing = await ok('exec', { command: 'sh test.sh' });
    assert.equal(failing.exitCode, 1);
    assert.match(failing.stdout as string, /FAIL add: got -1/);

    const read = await ok('file_read', { path: 'calc.sh', offset: 2, limit: 1 });
    assert.equal(read.text, 'add() { echo $(( $1 - $2 )); }');
    const edit = await ok('file_edit', { path: 'calc.sh', old_string: '$1 - $2', new_string: '$1 + $2' });
    assert.equal(edit.replacements, 1);

    const passing = await ok('exec', { command: 'sh test.sh' });
    assert.equal(passing.exitCode, 0, JSON.stringify(passing));
    assert.match(passing.stdout as string, /ok 1 add/);

    const diff = await ok('workspace_diff');
    assert.match(diff.patch as string, /-add\(\) \{ echo \$\(\( \$1 - \$2 \)\); \}\n\+add\(\) \{ echo \$\(\( \$1 \+ \$2 \)\); \}/);

    const base = git(repo, 'rev-parse', 'HEAD');
    const exported = await ok('workspace_export', { format: 'branch', name: 'fix' });
    assert.equal(exported.ref, 'refs/banger/mcp/fix');
    // On the host: the new ref's tree is the base tree with only calc.sh changed, to the fix.
    assert.equal(git(repo, 'show', 'refs/banger/mcp/fix:calc.sh'), CALC_FIXED.trimEnd());
    assert.equal(git(repo, 'diff', '--name-only', base, 'refs/banger/mcp/fix'), 'calc.sh');
    assert.equal(git(repo, 'rev-parse', 'refs/banger/mcp/fix:test.sh'), git(repo, 'rev-parse', `${base}:test.sh`));
    assert.equal(git(repo, 'rev-parse', 'HEAD'), base, "the host's HEAD did not move");
  });

  test('exec of sleep 60 answers with a running process id (not after 60 s); signalling it ends it', async (t) => {
    const started = performance.now();
    const r = await ok('exec', { command: 'echo started; sleep 60' });
    const ms = performance.now() - started;
    assert.equal(r.running, true);
    assert.equal(r.exitCode, null);
    assert.match(r.id as string, /^[a-z0-9][a-z0-9-]*$/);
    assert.equal(r.stdout, 'started\n');
    assert.equal(r.stdoutOffset, 8);
    t.diagnostic(`exec of sleep 60 answered after ${Math.round(ms)} ms with the process running`);
    await ok('process_signal', { id: r.id, signal: 'KILL' });
    const after = await ok('process_output', { id: r.id, stdout_offset: r.stdoutOffset, wait_s: 10 });
    assert.equal(after.running, false);
    assert.equal(after.stdout, '');
  });

  test('a long output comes back as head and tail, flagged, with offsets to read on', async () => {
    const r = await ok('exec', { command: 'seq 1 200000' });
    assert.equal(r.exitCode, 0);
    assert.equal(r.truncated, true);
    assert.ok((r.stdout as string).startsWith('1\n2\n3\n'));
    assert.ok((r.stdout as string).endsWith('199999\n200000\n'));
    const m = /read them with process_output from offset (\d+)/.exec(r.stdout as string);
    assert.ok(m, 'the marker names the offset');
    const more = await ok('process_output', { id: r.id, stdout_offset: Number(m[1]) });
    assert.ok((more.stdout as string).length > 0);
  });

  test('process_start with stdin, process_input, process_output, process_list', async () => {
    const p = await ok('process_start', { command: 'tr a-z A-Z', name: 'upper', stdin: true });
    await ok('process_input', { id: 'upper', text: 'hello mcp\n', eof: true });
    const out = await ok('process_output', { id: p.id, wait_s: 10 });
    assert.equal(out.stdout, 'HELLO MCP\n');
    assert.equal(out.exitCode, 0);
    const list = await ok('process_list');
    assert.ok((list.processes as Array<{ name: string | null }>).some((x) => x.name === 'upper'));
  });

  test('file_write, file_list, sandbox_list, sandbox_use, sandbox_info', async () => {
    assert.equal((await ok('file_write', { path: 'notes/new.txt', content: 'written by mcp\n' })).bytes, 15);
    const listed = await ok('file_list', { path: 'notes' });
    assert.deepEqual(listed.entries, [{ name: 'new.txt', type: 'file', size: 15 }]);
    assert.equal((await ok('file_read', { path: '/root/repo/notes/new.txt' })).text, 'written by mcp');
    const list = await ok('sandbox_list');
    assert.equal(list.current, 'mcp');
    assert.deepEqual(
      (list.sandboxes as Array<{ name: string }>).map((s) => s.name),
      ['mcp'],
    );
    assert.equal((await ok('sandbox_use', { vm: 'mcp' })).current, 'mcp');
    const info = await ok('sandbox_info');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.allowedHostPaths, [repo]);
    assert.ok((info.workspaceStatus as { changedFiles: number }).changedFiles >= 1);
  });

  test('host reads: inside the allowlist read; outside refused, the canary never in the answer', async () => {
    assert.equal((await ok('file_read', { path: 'test.sh', host: true, offset: 1, limit: 1 })).text, '#!/bin/sh');
    for (const path of ['../canary.txt', join(tmp, 'canary.txt'), '/etc/shadow']) {
      const r = await call('file_read', { path, host: true });
      assert.equal(r.isError, true, path);
      const text = JSON.stringify(r);
      assert.match(text, /outside the allowed directories/);
      assert.doesNotMatch(text, /CANARY/);
    }
    // A patch export outside the allowlist is refused too, and nothing is written there.
    const r = await call('workspace_export', { format: 'patch', path: join(tmp, 'out.patch') });
    assert.equal(r.isError, true);
    assert.equal(existsSync(join(tmp, 'out.patch')), false);
    const inside = await ok('workspace_export', { format: 'patch', name: 'p1' });
    assert.equal(inside.path, join(repo, 'banger-mcp-p1.patch'));
    git(repo, 'apply', '--check', inside.path as string);
  });

  test('sandbox_delete needs confirm; with it the VM is gone', async () => {
    assert.equal((await call('sandbox_delete', { vm: 'mcp' })).isError, true);
    assert.deepEqual(await ok('sandbox_delete', { vm: 'mcp', confirm: true }), { deleted: 'mcp' });
    assert.deepEqual((await ok('sandbox_list')).sandboxes, []);
  });

  test('every result stayed under the cap (per-tool latency and size in the diagnostics)', (t) => {
    assert.ok(calls.length >= 20);
    const byTool = new Map<string, Array<{ ms: number; chars: number }>>();
    for (const c of calls) byTool.set(c.name, [...(byTool.get(c.name) ?? []), c]);
    for (const [name, cs] of [...byTool].sort()) {
      const chars = cs.map((c) => c.chars);
      t.diagnostic(`${name}: ${cs.map((c) => `${Math.round(c.ms)} ms/${c.chars} chars`).join(', ')}`);
      for (const c of chars) assert.ok(c < MAX_RESULT_CHARS);
    }
  });
});
