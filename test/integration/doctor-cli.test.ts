import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { TestHome } from './harness.js';

interface Check {
  status: 'PASS' | 'WARN' | 'FAIL';
  name: string;
  detail: string;
  fix?: string;
}

const homes: TestHome[] = [];
after(async () => {
  await Promise.all(homes.map((h) => h.destroy()));
});

/**
 * Parses `banger doctor` text output strictly: every line is a check, a FIX of the check above,
 * the blank line, or the summary. Returns the checks in order.
 */
function parseDoctor(text: string): { checks: Check[]; summary: string } {
  const lines = text.split('\n');
  assert.equal(lines.pop(), '', 'output ends with a newline');
  const summary = lines.pop() ?? '';
  assert.equal(lines.pop(), '', 'a blank line precedes the summary');
  const checks: Check[] = [];
  for (const [i, line] of lines.entries()) {
    const check = /^(PASS|WARN|FAIL) {2}([^:]+): (.*)$/.exec(line);
    if (check) {
      checks.push({ status: check[1] as Check['status'], name: check[2] as string, detail: check[3] as string });
      continue;
    }
    // A multi-line fix (TOML to paste) goes on indented under its FIX line.
    const more = /^ {11}(.+)$/.exec(line);
    const previous = checks.at(-1);
    if (more && previous?.fix !== undefined) {
      previous.fix += `\n${more[1]}`;
      continue;
    }
    const fix = /^ {6}FIX: (.+)$/.exec(line);
    assert.ok(fix, `line ${i + 1} is neither a check nor a FIX: ${JSON.stringify(line)}`);
    const last = checks.at(-1);
    assert.ok(last, 'a FIX line before any check');
    assert.equal(last.fix, undefined, `two FIX lines for ${last.name}`);
    assert.notEqual(last.status, 'PASS', `PASS ${last.name} has a FIX line`);
    last.fix = fix[1] as string;
  }
  return { checks, summary };
}

async function doctor(home: TestHome): Promise<{ code: number; checks: Check[] }> {
  const r = await home.banger(['doctor']);
  assert.ok(r.code === 0 || r.code === 1, `doctor exited ${r.code}: ${r.stderr}`);
  const { checks, summary } = parseDoctor(r.stdout);
  assert.ok(checks.length >= 10, r.stdout);
  for (const c of checks) if (c.status !== 'PASS') assert.ok(c.fix, `${c.status} ${c.name} is not followed by a FIX line`);
  const n = (s: Check['status']) => checks.filter((c) => c.status === s).length;
  assert.equal(summary, `${n('PASS')} passed, ${n('WARN')} warnings, ${n('FAIL')} failed`);
  assert.equal(r.code, n('FAIL') > 0 ? 1 : 0, 'exit 1 exactly when a check FAILs');

  // --json says the same thing.
  const j = await home.banger(['doctor', '--json']);
  assert.equal(j.code, r.code);
  const parsed = JSON.parse(j.stdout) as { ok: boolean; checks: Check[] };
  assert.equal(parsed.ok, r.code === 0);
  // Free space moves between the two runs (other tests write to this disk): compare its status only.
  const comparable = (c: Check) => [c.status, c.name, c.name === 'free disk' ? '(varies)' : c.detail, c.fix];
  assert.deepEqual(parsed.checks.map(comparable), checks.map(comparable));
  return { code: r.code, checks };
}

test('doctor on this host: PASS/WARN/FAIL lines, a FIX after every WARN/FAIL, exit status matches', async () => {
  const home = await TestHome.create();
  homes.push(home);
  const { checks } = await doctor(home);
  const store = checks.find((c) => c.name === 'store');
  assert.equal(store?.status, 'WARN', 'a fresh home has no store yet');
  assert.match(store?.detail ?? '', /not created yet/);
  assert.match(checks.find((c) => c.name === 'config')?.detail ?? '', /absent: all defaults/);
  assert.deepEqual(home.daemonPids(), [], 'doctor changes nothing and starts nothing');
});

test('doctor with a broken config: FAIL config with a FIX, exit 1', async () => {
  const home = await TestHome.create('vmm = "bochs"\n');
  homes.push(home);
  const { code, checks } = await doctor(home);
  assert.equal(code, 1);
  const cfg = checks.find((c) => c.name === 'config');
  assert.equal(cfg?.status, 'FAIL');
  assert.ok(cfg?.detail.includes(home.configFile));
  assert.match(cfg?.detail ?? '', /"vmm"/);
  assert.match(cfg?.fix ?? '', /docs\/config\.md/);
});

test('doctor uses the configured binaries', async () => {
  const home = await TestHome.create('qemu_bin = "/nonexistent/qemu-banger-test"\nfirecracker_bin = "/nonexistent/fc-banger-test"\n');
  homes.push(home);
  const { code, checks } = await doctor(home);
  const qemu = checks.find((c) => c.name === 'qemu');
  assert.equal(qemu?.status, 'FAIL');
  assert.match(qemu?.detail ?? '', /\/nonexistent\/qemu-banger-test not found/);
  assert.match(checks.find((c) => c.name === 'firecracker')?.detail ?? '', /\/nonexistent\/fc-banger-test not found/);
  assert.equal(code, 1);
});
