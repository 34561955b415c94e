import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentSession } from '../../src/api/agent-schemas.js';
import type { Vm } from '../../src/api/schemas.js';
import { ensureAgentsImageHome } from '../helpers/agents-image.js';
import { BANGER, guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

/**
 * `vm run --agent` on a real VM of the agents image (cached by test/helpers/agents-image.ts, as
 * test/e2e/agents.test.ts): a stand-in agent (`[agents.stand-in]`: writes a file in the repository,
 * then waits for input as an agent does) started in its tmux session in the workspace; the session
 * is listed with its command, survives the call that started it (the tmux server outside the
 * process's cgroup), is reused by a second start, and its work comes back through the workspace
 * export. The attach itself needs a terminal: test/integration/cli-agent-fake-daemon.test.ts.
 */
describe('coding agent sessions', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let work: string;
  let repo: string;
  let vm: Vm | undefined;

  const exec = async (cmd: string) => {
    const r = await home.banger(['vm', 'exec', 'agents', '--', 'sh', '-c', cmd], 120_000);
    assert.equal(r.code, 0, `${cmd}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    const a = assets as NonNullable<typeof assets>;
    const cached = await ensureAgentsImageHome(a);
    work = await mkdtemp(join(tmpdir(), 'bg-agent-sessions-'));
    repo = join(work, 'repo');
    const git = (...args: string[]) => {
      const r = spawnSync('git', ['-C', repo, '-c', 'user.name=t', '-c', 'user.email=t@e', ...args], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    };
    spawnSync('mkdir', ['-p', repo]);
    git('init', '-q');
    await writeFile(join(repo, 'README'), 'hello\n');
    git('add', 'README');
    git('commit', '-qm', 'one');
    home = await TestHome.reuse(
      cached.home,
      [
        'accel = "tcg"',
        '[vm_defaults]',
        'vcpu = 1',
        'memory_mib = 1536',
        '[agents.stand-in]',
        // Quotes and $ in the words: they reach the program as written.
        `command = ["sh", "-c", "printf '%s\\\\n' \\"$1\\" \\"$MARK\\" > agent-file.txt; read line", "sh", "it's $(not run)"]`,
        'env = { MARK = "a b" }',
        '',
      ].join('\n'),
      { netns: true },
    );
    const { vms } = await home.json<{ vms: Vm[] }>(['vm', 'list']);
    if (vms.length) await home.ok(['vm', 'delete', ...vms.map((v) => v.id)]);
  });
  after(async () => {
    if (home && vm) await home.banger(['vm', 'delete', vm.id]);
    await home?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('vm run -d --agent: the agents image with NAT, the workspace, the agent running in its session there', async () => {
    const r = await home.banger(['vm', 'run', '-d', '--name', 'agents', '--agent', 'stand-in', repo], 15 * 60_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /started stand-in in agents \(tmux session stand-in, in \/root\/repo\)/);
    assert.match(r.stdout, /banger vm agent attach agents/);
    vm = await home.json<Vm>(['vm', 'show', 'agents']);
    assert.equal(vm.imageName, 'debian-bookworm-agents');
    assert.equal(vm.nat, true);

    const { sessions } = await home.json<{ sessions: AgentSession[] }>(['vm', 'agent', 'list', 'agents']);
    const s = sessions.find((x) => x.name === 'stand-in');
    assert.ok(s, JSON.stringify(sessions));
    // The list shows the command without its env value; the guest's option has it (a restore runs it).
    assert.match(s.command ?? '', /^MARK=… sh -c /);
    assert.equal((await exec("tmux show-options -v -t '=stand-in:' @banger-command")).trimEnd(), `MARK='a b' ${(s.command ?? '').slice('MARK=… '.length)}`);
    // The server is outside the guest agent's process cgroups (/banger/<id>, ended with their process):
    // in the root cgroup when this start made it, in the image's tmux unit when that one had.
    const cgroup = (await exec('grep ^0:: /proc/$(tmux display-message -p -t =stand-in: "#{pid}")/cgroup')).trim();
    assert.match(cgroup, /^0::\//);
    assert.doesNotMatch(cgroup, /^0::\/banger\//);

    // The stand-in writes its file as soon as it starts; it runs in the server, not in our call.
    let text = '';
    for (let i = 0; i < 60 && !text; i++) {
      text = (await home.banger(['vm', 'exec', 'agents', '--', 'cat', '/root/repo/agent-file.txt'])).stdout;
      if (!text) await sleep(500);
    }
    assert.equal(text, "it's $(not run)\na b\n");
  });

  test('a second start reuses the session: the agent is not started again', async () => {
    const pid = (await exec('tmux list-panes -t =stand-in: -F "#{pane_pid}"')).trim();
    const r = await home.json<{ created: boolean }>(['vm', 'agent', 'start', 'agents', 'stand-in', '--json']);
    assert.equal(r.created, false);
    assert.equal((await exec('tmux list-panes -t =stand-in: -F "#{pane_pid}"')).trim(), pid);
  });

  test('claude and codex start with their sandbox flags as root: each draws its screen, neither refuses its options', async () => {
    // (opencode and pi take no flags; without a network, opencode draws nothing for a long while.)
    for (const agent of ['claude', 'codex']) {
      const r = await home.json<{ created: boolean; command: string }>(['vm', 'agent', 'start', 'agents', agent, '--json']);
      assert.equal(r.created, true, agent);
      // Until the program draws something, or its session ends (a refused option ends it at once).
      let screen = '';
      for (let i = 0; i < 120 && !screen.trim(); i++) {
        const shot = await home.banger(['vm', 'exec', 'agents', '--', 'tmux', 'capture-pane', '-p', '-t', `=${agent}:`]);
        assert.equal(shot.code, 0, `${agent}: its session ended (${r.command}): ${shot.stderr}`);
        screen = shot.stdout;
        if (!screen.trim()) await sleep(500);
      }
      assert.ok(screen.trim(), `${agent} drew nothing`);
      assert.doesNotMatch(screen, /cannot be used with root|unknown option|unexpected argument|unrecognized|not found/i, `${agent}:\n${screen}`);
    }
  });

  test("attach in a terminal: tmux's detach key ends it, the agent keeps running, the CLI says how to come back", async (t) => {
    if (spawnSync('script', ['--version']).status !== 0) return t.skip('util-linux script (a pseudo-terminal for the CLI) is not installed');
    const pid = (await exec('tmux list-panes -t =stand-in: -F "#{pane_pid}"')).trim();
    // The CLI under a pseudo-terminal (script), as in a user's terminal; it reaches the daemon by its socket.
    const child = spawn('script', ['-qefc', `'${process.execPath}' '${BANGER}' vm agent attach agents --agent stand-in`, '/dev/null'], {
      env: { ...home.env, TERM: 'xterm-256color' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('utf8');
    });
    // tmux draws its status line with the session's name once attached: then its prefix (Ctrl-B) and d.
    for (let i = 0; i < 240 && !/\[stand-in\]/.test(out); i++) await sleep(250);
    assert.match(out, /\[stand-in\]/, 'tmux drew the session');
    child.stdin.write('\x02d');
    const code = await exited;
    assert.equal(code, 0, out.slice(-2000));
    assert.match(out, /\[detached \(from session stand-in\)\]/);
    assert.match(out, /stand-in keeps running in agents; back to it: banger vm agent attach agents --agent stand-in/);
    assert.equal((await exec('tmux list-panes -t =stand-in: -F "#{pane_pid}"')).trim(), pid, 'the same agent, still running');
  });

  test("the agent's work comes back through the workspace export", async () => {
    const r = await home.banger(['vm', 'workspace', 'export', 'agents', '--format', 'patch'], 120_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /agent-file\.txt/);
    assert.match(r.stdout, /\+a b/);
  });
});
