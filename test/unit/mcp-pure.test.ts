import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { HostAllowlist } from '../../src/mcp/allowlist.js';
import { applyEdit, MAX_EDITED_CHARS, selectLines } from '../../src/mcp/edit.js';
import { mergeConfig, serverEntry, snippet, writeClientConfig } from '../../src/mcp/install.js';
import { HeadTailSink } from '../../src/mcp/output.js';
import { implicitRoot } from '../../src/mcp/stdio.js';
import { capText, fitList, jsonLength, sanitize } from '../../src/mcp/text.js';

const code = (c: string) => (e: unknown) => e instanceof BangerError && e.code === c;

describe('caps', () => {
  test('short text is kept whole; control and bidi characters are removed', () => {
    const r = capText('ok\x1b]0;pwned\x07 \u202Eevil\r\n\tdone\u0000', 1000);
    assert.equal(r.truncated, false);
    assert.equal(r.text, 'ok]0;pwned evil\n\tdone');
  });

  test('long text keeps its head and tail with a marker, and its JSON form stays within the budget', () => {
    const lines = Array.from({ length: 5000 }, (_, i) => `line ${i} "quoted" \\ back`);
    const r = capText(lines.join('\n'), 4000);
    assert.equal(r.truncated, true);
    assert.ok(r.text.startsWith('line 0 '), 'the head is kept');
    assert.ok(r.text.endsWith('line 4999 "quoted" \\ back'), 'the tail is kept');
    assert.match(r.text, /\[… \d+ characters omitted …\]/);
    assert.ok(JSON.stringify(r.text).length - 2 <= 4000, `JSON ${JSON.stringify(r.text).length}`);
    assert.equal(jsonLength(r.text), JSON.stringify(r.text).length - 2);
  });

  test('worst case: every character needs escaping, still within the budget; no surrogate pair is split', () => {
    for (const unit of ['"', '\\', '\n', '😀', 'é']) {
      const r = capText(unit.repeat(50_000), 3000);
      assert.ok(JSON.stringify(r.text).length - 2 <= 3000, `${JSON.stringify(unit)}: ${JSON.stringify(r.text).length}`);
      assert.equal(r.text, sanitize(r.text), 'no lone surrogate left');
    }
  });

  test('fitList keeps whole items while the JSON array fits', () => {
    const items = Array.from({ length: 100 }, (_, i) => ({ name: `file-${i}`, size: i }));
    const r = fitList(items, 500);
    assert.equal(r.truncated, true);
    assert.ok(JSON.stringify(r.items).length <= 500);
    assert.deepEqual(r.items, items.slice(0, r.items.length));
    assert.deepEqual(fitList(items.slice(0, 3), 500), { items: items.slice(0, 3), truncated: false });
  });

  test('HeadTailSink keeps bounded head and tail of any amount written', async () => {
    const sink = new HeadTailSink(10, 10);
    for (let i = 0; i < 1000; i++) sink.write(Buffer.from(`${String(i).padStart(4, '0')}\n`));
    await new Promise<void>((r) => sink.end(r));
    const t = sink.text();
    assert.equal(sink.total, 5000);
    assert.equal(t.cut, true);
    assert.ok(t.text.startsWith('0000\n0001\n'));
    assert.ok(t.text.endsWith('0998\n0999\n'));
    assert.match(t.text, /\[… 4980 bytes omitted …\]/);
  });
});

describe('file_edit semantics', () => {
  test('one occurrence is replaced; literally (no $& patterns)', () => {
    assert.deepEqual(applyEdit('a = 1\nb = 2\n', 'b = 2', 'b = $& + 3'), { content: 'a = 1\nb = $& + 3\n', replacements: 1 });
  });
  test('absent old string: refused (not_found), nothing to write', () => {
    assert.throws(() => applyEdit('abc', 'x', 'y'), code('not_found'));
  });
  test('several occurrences: refused unless replace_all, which replaces them all', () => {
    assert.throws(
      () => applyEdit('x x x', 'x', 'y'),
      (e: unknown) => code('conflict')(e) && /3 times/.test((e as Error).message),
    );
    assert.deepEqual(applyEdit('x x x', 'x', 'y', true), { content: 'y y y', replacements: 3 });
  });
  test('empty or unchanged old string: refused', () => {
    assert.throws(() => applyEdit('abc', '', 'y'), code('bad_request'));
    assert.throws(() => applyEdit('abc', 'a', 'a'), code('bad_request'));
  });
  test('line windows are 1-based; a final newline does not add a line', () => {
    const text = 'one\ntwo\nthree\n';
    assert.deepEqual(selectLines(text, 2, 1), { text: 'two', from: 2, count: 1, totalLines: 3 });
    assert.deepEqual(selectLines(text), { text: 'one\ntwo\nthree', from: 1, count: 3, totalLines: 3 });
    assert.deepEqual(selectLines(text, 9), { text: '', from: 9, count: 0, totalLines: 3 });
    assert.deepEqual(selectLines(''), { text: '', from: 1, count: 0, totalLines: 0 });
  });
});

describe('host allowlist', () => {
  const tmp = mkdtempSync('/tmp/bg-mcp-allow-');
  const root = join(tmp, 'project');
  const outside = join(tmp, 'outside');
  mkdirSync(join(root, 'src'), { recursive: true });
  mkdirSync(outside);
  writeFileSync(join(root, 'src', 'a.txt'), 'inside\n');
  writeFileSync(join(outside, 'canary.txt'), 'CANARY-SECRET\n');
  symlinkSync(join(outside, 'canary.txt'), join(root, 'escape-file'));
  symlinkSync(outside, join(root, 'escape-dir'));
  symlinkSync('src/a.txt', join(root, 'inner-link'));
  execFileSync('mkfifo', [join(root, 'fifo')]);
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const allow = new HostAllowlist(root, [root]);

  const readVia = async (p: string) => {
    const { handle } = await allow.openForRead(p);
    try {
      return (await handle.readFile()).toString();
    } finally {
      await handle.close();
    }
  };

  test('a file inside the root is read, by relative or absolute path, and a link that stays inside too', async () => {
    assert.equal(await readVia('src/a.txt'), 'inside\n');
    assert.equal(await readVia(join(root, 'src', 'a.txt')), 'inside\n');
    assert.equal(await readVia('inner-link'), 'inside\n');
  });

  test('".." out of the root, a symlinked file and a symlinked directory leading out are refused; the canary is not read', async () => {
    for (const p of [
      '../outside/canary.txt',
      'src/../../outside/canary.txt',
      'escape-file',
      'escape-dir/canary.txt',
      join(outside, 'canary.txt'),
      '/etc/passwd',
    ]) {
      await assert.rejects(readVia(p), (e: unknown) => {
        assert.ok(code('precondition_failed')(e), `${p}: ${String(e)}`);
        assert.doesNotMatch((e as Error).message, /CANARY-SECRET/);
        return true;
      });
    }
  });

  test('non-regular files (a directory, a FIFO) are refused; a size bound holds', async () => {
    await assert.rejects(readVia('src'), code('precondition_failed'));
    await assert.rejects(readVia('fifo'), code('precondition_failed'));
    await assert.rejects(allow.openForRead('src/a.txt', 3), code('payload_too_large'));
  });

  test('writeNew creates a new file, never replaces one, and never writes through a link out of the root', async () => {
    const made = await allow.writeNew('new.patch', 'diff\n');
    assert.equal(readFileSync(made, 'utf8'), 'diff\n');
    await assert.rejects(allow.writeNew('new.patch', 'other\n'), code('conflict'));
    assert.equal(readFileSync(made, 'utf8'), 'diff\n');
    await assert.rejects(allow.writeNew('escape-dir/planted.patch', 'x'), code('precondition_failed'));
    await assert.rejects(allow.writeNew('escape-file', 'x'), code('conflict'));
    assert.deepEqual(readdirSync(outside), ['canary.txt'], 'nothing was written outside');
    assert.equal(readFileSync(join(outside, 'canary.txt'), 'utf8'), 'CANARY-SECRET\n');
    assert.ok(!readdirSync(root).some((n) => n.includes('.banger-')), 'no staging file left');
  });
});

describe('install snippets', () => {
  test('claude: mcpServers.banger as a stdio command', () => {
    assert.deepEqual(snippet('claude', 'banger', ['mcp']), { mcpServers: { banger: { type: 'stdio', command: 'banger', args: ['mcp'] } } });
  });
  test('opencode: mcp.banger as a local command array; the mcp.servers layout is followed when present', () => {
    const entry = serverEntry('opencode', 'banger', ['mcp', '--allow', '/src']);
    assert.deepEqual(entry, { type: 'local', command: ['banger', 'mcp', '--allow', '/src'], enabled: true });
    assert.deepEqual(mergeConfig('opencode', { theme: 'x', mcp: { other: { type: 'remote' } } }, entry), {
      theme: 'x',
      mcp: { other: { type: 'remote' }, banger: entry },
    });
    assert.deepEqual(mergeConfig('opencode', { mcp: { servers: { other: {} } } }, entry), { mcp: { servers: { other: {}, banger: entry } } });
  });
  test('merge keeps other servers and keys, replaces only banger, refuses shapes it does not understand', () => {
    const existing = { mcpServers: { other: { command: 'x' }, banger: { command: 'old' } }, extra: [1] };
    const merged = mergeConfig('claude', existing, serverEntry('claude', 'banger', ['mcp']));
    assert.deepEqual(merged, { mcpServers: { other: { command: 'x' }, banger: { type: 'stdio', command: 'banger', args: ['mcp'] } }, extra: [1] });
    assert.deepEqual(existing.mcpServers.banger, { command: 'old' }, 'the input is not changed');
    assert.throws(() => mergeConfig('claude', { mcpServers: [] }, {}), code('invalid_config'));
    assert.throws(() => mergeConfig('claude', [], {}), code('invalid_config'));
  });
  test('writeClientConfig merges into the file atomically and refuses invalid JSON without touching it', async () => {
    const dir = mkdtempSync('/tmp/bg-mcp-install-');
    try {
      writeFileSync(join(dir, '.mcp.json'), JSON.stringify({ mcpServers: { other: { command: 'x' } } }));
      await writeClientConfig('claude', dir, 'banger', ['mcp']);
      assert.deepEqual(JSON.parse(readFileSync(join(dir, '.mcp.json'), 'utf8')), {
        mcpServers: { other: { command: 'x' }, banger: { type: 'stdio', command: 'banger', args: ['mcp'] } },
      });
      await writeClientConfig('opencode', dir, 'banger', ['mcp']);
      assert.equal(JSON.parse(readFileSync(join(dir, 'opencode.json'), 'utf8')).mcp.banger.type, 'local');
      writeFileSync(join(dir, 'opencode.json'), '{ // a comment\n}');
      await assert.rejects(writeClientConfig('opencode', dir, 'banger', ['mcp']), code('invalid_config'));
      assert.equal(readFileSync(join(dir, 'opencode.json'), 'utf8'), '{ // a comment\n}');
      assert.deepEqual(readdirSync(dir).sort(), ['.mcp.json', 'opencode.json'], 'no staging file left');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('review fixes', () => {
  const dir = mkdtempSync('/tmp/bg-mcp-review-');
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('invisible characters a reader cannot see are removed (zero-width, BOM, tag characters, annotations)', () => {
    const hidden = `a\u200bb\u200dc\u2060d\ufeffe\ufff9f${String.fromCodePoint(0xe0041, 0xe007f)}g`;
    assert.equal(sanitize(hidden), 'abcdefg');
    assert.equal(sanitize('emoji \u{1f600} stays'), 'emoji \u{1f600} stays');
  });

  test('the start directory is allowed unless it is /, the home directory or above it', () => {
    const home = join(dir, 'home', 'u');
    const project = join(home, 'src', 'p');
    mkdirSync(project, { recursive: true });
    assert.deepEqual(implicitRoot(project, home, []), [project]);
    for (const wide of ['/', home, join(dir, 'home')]) {
      assert.throws(() => implicitRoot(wide, home, []), /too wide to allow/, wide);
      assert.deepEqual(implicitRoot(wide, home, [project]), [], `${wide} with an explicit --allow`);
    }
  });

  test('a refusal names nothing outside the roots, whether or not it exists', async () => {
    const root = join(dir, 'root');
    mkdirSync(root);
    writeFileSync(join(dir, 'exists.txt'), 'CANARY');
    symlinkSync(join(dir, 'exists.txt'), join(root, 'link'));
    const allow = new HostAllowlist(root, [root]);
    const messages = [];
    for (const p of [join(root, '..', 'exists.txt'), join(root, '..', 'absent.txt'), join(root, 'link')]) {
      const e = await allow.resolve(p).then(
        () => undefined,
        (x: BangerError) => x,
      );
      assert.ok(e instanceof BangerError, p);
      assert.doesNotMatch(e.message, /CANARY|leads to|replaced by/);
      messages.push(e.message.replace(JSON.stringify(p), 'P'));
    }
    assert.equal(new Set(messages).size, 1, messages.join(' | '));
  });

  test('readBounded stops at its bound even for a file that grows', async () => {
    const root = join(dir, 'grow');
    mkdirSync(root);
    writeFileSync(join(root, 'f'), 'x'.repeat(100));
    const allow = new HostAllowlist(root, [root]);
    assert.equal((await allow.readBounded('f', 100)).data.length, 100);
    await assert.rejects(allow.readBounded('/dev/zero'), /outside the allowed directories/);
    writeFileSync(join(root, 'f'), 'x'.repeat(101));
    await assert.rejects(allow.readBounded('f', 100), (e: BangerError) => e.code === 'payload_too_large');
  });

  test('replace_all that would blow up the file is refused before the result is built', () => {
    const content = 'a'.repeat(1024 * 1024);
    assert.throws(
      () => applyEdit(content, 'a', 'b'.repeat(64), true),
      (e: BangerError) => e.code === 'payload_too_large',
    );
    assert.ok(MAX_EDITED_CHARS >= 1024 * 1024);
  });
});
