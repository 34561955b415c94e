import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { HostAllowlist } from '../../src/mcp/allowlist.js';
import { createMcpServer } from '../../src/mcp/server.js';
import { MAX_RESULT_CHARS } from '../../src/mcp/text.js';
import { FakeSandboxApi, fakeVm } from '../helpers/fake-sandbox-api.js';

/**
 * The MCP server end to end in process: the official Client over an in-memory transport, the
 * server's real tools, a FakeSandboxApi instead of the daemon. The real daemon and VM are
 * test/e2e/mcp.test.ts.
 */
const EXPECTED_TOOLS = [
  'sandbox_create',
  'sandbox_list',
  'sandbox_use',
  'sandbox_info',
  'sandbox_delete',
  'exec',
  'process_start',
  'process_output',
  'process_input',
  'process_signal',
  'process_list',
  'file_read',
  'file_write',
  'file_edit',
  'file_list',
  'workspace_diff',
  'workspace_export',
];
/** ≈ 3k tokens at 4 characters a token: the tool list and the instructions together. */
const TOOL_LIST_CHAR_BOUND = 12_000;

describe('MCP server (fake daemon)', () => {
  let api: FakeSandboxApi;
  let client: Client;
  let tmp: string;
  const sizes: number[] = [];

  const call = async (name: string, args: Record<string, unknown> = {}) => {
    const r = (await client.callTool({ name, arguments: args })) as CallToolResult;
    sizes.push(JSON.stringify(r).length);
    return r;
  };
  const ok = async (name: string, args: Record<string, unknown> = {}) => {
    const r = await call(name, args);
    assert.ok(!r.isError, `${name}: ${JSON.stringify(r.content)}`);
    assert.deepEqual(JSON.parse((r.content[0] as { text: string }).text), r.structuredContent, 'the text is the structured content');
    return r.structuredContent as Record<string, unknown>;
  };
  const err = async (name: string, args: Record<string, unknown>) => {
    const r = await call(name, args);
    assert.equal(r.isError, true, `${name} should fail: ${JSON.stringify(r)}`);
    return (r.content[0] as { text: string }).text;
  };

  before(async () => {
    tmp = mkdtempSync('/tmp/bg-mcp-srv-');
    mkdirSync(join(tmp, 'project'));
    writeFileSync(join(tmp, 'project', 'notes.txt'), 'host notes\n');
    writeFileSync(join(tmp, 'canary.txt'), 'CANARY-OUTSIDE\n');
    api = new FakeSandboxApi();
    const server = createMcpServer({ api, allow: new HostAllowlist(join(tmp, 'project'), [join(tmp, 'project')]) });
    const [a, b] = InMemoryTransport.createLinkedPair();
    await server.connect(a);
    client = new Client({ name: 'unit', version: '1' });
    await client.connect(b);
  });
  after(async () => {
    await client?.close();
    rmSync(tmp, { recursive: true, force: true });
    for (const s of sizes) assert.ok(s < MAX_RESULT_CHARS, `a result of ${s} characters`);
  });

  test('tools/list: every tool, with input and output schemas and all four annotations; the list is small', async () => {
    const { tools } = await client.listTools();
    assert.deepEqual(
      tools.map((t) => t.name),
      EXPECTED_TOOLS,
    );
    for (const t of tools) {
      assert.equal(t.inputSchema.type, 'object', t.name);
      assert.equal(t.outputSchema?.type, 'object', `${t.name}: output schema`);
      for (const hint of ['readOnlyHint', 'destructiveHint', 'idempotentHint', 'openWorldHint'] as const) {
        assert.equal(typeof t.annotations?.[hint], 'boolean', `${t.name}: ${hint}`);
      }
    }
    const byName = Object.fromEntries(tools.map((t) => [t.name, t]));
    assert.equal(byName.sandbox_delete?.annotations?.destructiveHint, true);
    assert.equal(byName.file_read?.annotations?.readOnlyHint, true);
    assert.deepEqual(byName.sandbox_delete?.inputSchema.required, ['vm', 'confirm']);
    assert.deepEqual(byName.file_edit?.inputSchema.required, ['path', 'old_string', 'new_string']);
    const chars = JSON.stringify({ tools }).length + (client.getInstructions() ?? '').length;
    assert.ok(chars <= TOOL_LIST_CHAR_BOUND, `tool list + instructions: ${chars} characters (≈ ${Math.round(chars / 4)} tokens)`);
  });

  test('with no current sandbox a tool says how to get one', async () => {
    assert.match(await err('exec', { command: 'true' }), /no sandbox given and none is current[\s\S]*sandbox_create/);
  });

  test('sandbox_use then file_edit: unique replace, absent and ambiguous refused (file unchanged), replace_all', async () => {
    assert.deepEqual(await ok('sandbox_use', { vm: 'dev' }), { current: 'dev' });
    api.files.set('/root/repo/app.py', { data: Buffer.from('x = 1\ny = 1\nprint(x)\n'), mode: 0o755 });
    assert.equal((await ok('file_edit', { path: 'app.py', old_string: 'print(x)', new_string: 'print(x + y)' })).replacements, 1);
    assert.equal(api.files.get('/root/repo/app.py')?.data.toString(), 'x = 1\ny = 1\nprint(x + y)\n');
    assert.equal(api.files.get('/root/repo/app.py')?.mode, 0o755, 'the mode is kept');
    const writes = api.writes.length;
    assert.match(await err('file_edit', { path: 'app.py', old_string: 'z = 3', new_string: 'w' }), /not_found.*does not occur/);
    assert.match(await err('file_edit', { path: 'app.py', old_string: ' = 1', new_string: ' = 2' }), /occurs 2 times[\s\S]*replace_all/);
    assert.equal(api.writes.length, writes, 'a refused edit writes nothing');
    assert.equal((await ok('file_edit', { path: '/root/repo/app.py', old_string: ' = 1', new_string: ' = 2', replace_all: true })).replacements, 2);
    assert.equal(api.files.get('/root/repo/app.py')?.data.toString(), 'x = 2\ny = 2\nprint(x + y)\n');
  });

  test('file_read: line ranges; a long file is cut at whole lines with the next line to read', async () => {
    const big = Array.from({ length: 3000 }, (_, i) => `line ${i + 1}`).join('\n');
    api.files.set('/root/repo/big.txt', { data: Buffer.from(big), mode: 0o644 });
    const part = await ok('file_read', { path: 'big.txt', offset: 10, limit: 2 });
    assert.equal(part.text, 'line 10\nline 11');
    assert.equal(part.totalLines, 3000);
    const whole = await ok('file_read', { path: 'big.txt' });
    assert.equal(whole.truncated, true);
    const next = whole.nextLine as number;
    assert.ok(next > 1 && next < 3000);
    assert.ok((whole.text as string).endsWith(`line ${next - 1}`));
  });

  test('file_read of host paths: inside the allowlist read; outside refused and the canary not read', async () => {
    assert.equal((await ok('file_read', { path: 'notes.txt', host: true })).text, 'host notes');
    for (const p of ['../canary.txt', join(tmp, 'canary.txt')]) {
      const text = await err('file_read', { path: p, host: true });
      assert.match(text, /outside the allowed directories/);
      assert.doesNotMatch(text, /CANARY/);
    }
  });

  test('exec: a huge output comes back as head and tail under the cap, with offsets; guest control characters removed', async () => {
    const out = `\x1b[2J${Array.from({ length: 20_000 }, (_, i) => `out ${i}`).join('\n')}\n`;
    api.nextProc = { stdout: out, stderr: 'warn\x07ing\n', exitCode: 0 };
    const r = await ok('exec', { command: 'make -s test' });
    assert.equal(r.exitCode, 0);
    assert.equal(r.running, false);
    assert.equal(r.truncated, true);
    assert.ok((r.stdout as string).startsWith('[2Jout 0\n'), 'the head, ESC removed');
    assert.ok((r.stdout as string).endsWith('out 19999\n'), 'the tail');
    assert.match(r.stdout as string, /bytes omitted: read them with process_output from offset \d+/);
    assert.equal(r.stderr, 'warning\n');
    assert.equal(r.stdoutOffset, Buffer.byteLength(out));
    assert.equal(api.started.at(-1)?.cwd, '/root/repo', 'commands start in the workspace');
  });

  test('exec of a command still running answers with its id and offsets; process_output reads on from them', async () => {
    api.nextProc = { stdout: 'started\n', exitCode: null };
    const r = await ok('exec', { command: 'sleep 60', wait_s: 0 });
    assert.equal(r.running, true);
    assert.equal(r.exitCode, null);
    assert.equal(r.stdoutOffset, 8);
    const more = await ok('process_output', { id: r.id, stdout_offset: 4 });
    assert.equal(more.stdout, 'ted\n');
    assert.equal((await ok('process_list')).truncated, false);
  });

  test('oversized arguments are refused before any write', async () => {
    const writes = api.writes.length;
    assert.match(await err('file_write', { path: 'huge.txt', content: 'x'.repeat(6 * 1024 * 1024) }), /payload_too_large/);
    assert.equal(api.writes.length, writes);
  });

  test("workspace_export writes into the sandbox's own repository (even outside the allowlist) and nowhere else", async () => {
    const other = join(tmp, 'other-repo');
    mkdirSync(other);
    api.vmsByName.set('cli', fakeVm('cli', '/root/repo', other));
    const r = await ok('workspace_export', { vm: 'cli', format: 'patch', name: 'try' });
    assert.equal(r.path, join(other, 'banger-cli-try.patch'));
    assert.equal(readFileSync(join(other, 'banger-cli-try.patch'), 'utf8'), api.patch);
    assert.match(await err('workspace_export', { vm: 'cli', format: 'patch', path: join(tmp, 'loose.patch') }), /outside the allowed directories/);
    assert.equal(existsSync(join(tmp, 'loose.patch')), false);
    assert.match(await err('workspace_export', { vm: 'cli', format: 'patch', name: 'try' }), /already exists/);
    assert.equal((await ok('workspace_export', { vm: 'cli', name: 'b1' })).ref, 'refs/banger/cli/b1');
    // Host reads stay limited to the allowlist: the sandbox's repository is not readable through file_read.
    writeFileSync(join(other, 'secret.env'), 'TOKEN=CANARY\n');
    assert.doesNotMatch(await err('file_read', { vm: 'cli', path: join(other, 'secret.env'), host: true }), /CANARY/);
  });

  test('a patch lands only in a *.patch/*.diff file outside dot-directories, and only when the guest sent a patch', async () => {
    const other = join(tmp, 'hostile-repo');
    mkdirSync(join(other, 'docs'), { recursive: true });
    api.vmsByName.set('h', fakeVm('h', '/root/repo', other));
    const before = readdirSync(other).sort();
    // Names a host tool loads by itself, or git reads as another repository: refused before the export.
    for (const path of ['docs/.git', '.git/commondir', '.npmrc', 'GNUmakefile', 'conftest.py', 'x/.hidden/a.patch', '.a.patch', 'docs/..patch']) {
      assert.match(await err('workspace_export', { vm: 'h', format: 'patch', path: join(other, path) }), /bad_request|new \*\.patch/, path);
    }
    // A hostile guest's "patch" that is a gitfile: refused, nothing written.
    const saved = api.patch;
    api.patch = 'gitdir: /home/u/private/.git\n';
    try {
      assert.match(await err('workspace_export', { vm: 'h', format: 'patch', path: join(other, 'docs', 'x.patch') }), /not a git patch/);
    } finally {
      api.patch = saved;
    }
    assert.deepEqual(readdirSync(other).sort(), before);
    assert.deepEqual(readdirSync(join(other, 'docs')), []);
    const r = await ok('workspace_export', { vm: 'h', format: 'patch', path: join(other, 'docs', 'fix.diff') });
    assert.equal(r.path, join(other, 'docs', 'fix.diff'));
  });

  test('sandbox_delete needs confirm: true (refused before anything is asked of the daemon)', async () => {
    assert.match(await err('sandbox_delete', { vm: 'dev' }), /confirm/);
    assert.match(await err('sandbox_delete', { vm: 'dev', confirm: false }), /confirm/);
  });
});
