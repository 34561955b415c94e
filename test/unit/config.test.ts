import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { ConfigSchema, defaultConfig, loadConfig, parseConfig } from '../../src/config/config.js';
import { resolveLayout } from '../../src/config/layout.js';
import { parseDuration, parseSize } from '../../src/util/duration.js';

const FILE = '/home/u/.config/banger/config.toml';

/** Asserts parseConfig refuses `text` with an invalid_config error whose message matches every pattern. */
function refuses(text: string, ...patterns: RegExp[]): BangerError {
  let caught: unknown;
  try {
    parseConfig(text, FILE);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof BangerError, `expected a BangerError for ${JSON.stringify(text)}, got ${String(caught)}`);
  assert.equal(caught.code, 'invalid_config');
  assert.ok(caught.message.startsWith(FILE), `message should start with the file: ${caught.message}`);
  for (const p of patterns) assert.match(caught.message, p);
  assert.ok(caught.fix, 'a config error carries a fix');
  return caught;
}

test('defaults: an empty file equals defaultConfig() and holds the documented values', () => {
  assert.deepEqual(parseConfig('', FILE), defaultConfig());
  assert.deepEqual(defaultConfig(), {
    log_level: 'info',
    vmm: 'auto',
    firecracker_bin: 'firecracker',
    qemu_bin: 'qemu-system-x86_64',
    vmm_user: '',
    jailer_bin: 'jailer',
    accel: 'auto',
    default_image_name: 'debian-bookworm',
    kernel_catalogs: [],
    image_catalogs: [],
    debian_mirror: 'http://deb.debian.org/debian',
    debian_keyring: '/usr/share/keyrings/debian-archive-keyring.gpg',
    auto_stop_stale_after: 'off',
    bridge_name: 'banger0',
    bridge_ip: '172.30.0.1',
    cidr: '172.30.0.0/24',
    tap_pool_size: 2,
    default_dns: [],
    dns_listen_addr: '127.0.0.1:42069',
    bridge_dns_port: 42053,
    web_listen_addr: '127.0.0.1:42070',
    web_allow_remote: false,
    vm_defaults: {},
    file_sync: [],
    default_agent_image: 'debian-bookworm-agents',
    agents: {},
  });
  assert.equal(defaultConfig().ssh_key_path, undefined);
});

// Every key set to a non-default value. The key-coverage assertion below makes this test fail
// when a key is added to ConfigSchema without being exercised (and documented) here.
const FULL = `
log_level = "debug"
vmm = "qemu"
firecracker_bin = "/opt/fc/firecracker"
qemu_bin = "/usr/local/bin/qemu-system-x86_64"
vmm_user = "banger-vmm"
jailer_bin = "/opt/fc/jailer"
accel = "tcg"
kernel_catalogs = ["kernels.json", "https://example.org/kernels.json"]
image_catalogs = ["/etc/banger/images.json"]
debian_mirror = "https://mirror.example.org/debian"
debian_keyring = "/etc/apt/keyrings/mirror.gpg"
ssh_key_path = "~/.ssh/id_ed25519"
default_image_name = "alpine"
auto_stop_stale_after = "2h30m"
bridge_name = "banger1"
bridge_ip = "10.77.0.1"
cidr = "10.77.0.0/16"
tap_pool_size = 4
default_dns = ["1.1.1.1", "2606:4700:4700::1111"]
dns_listen_addr = "127.0.0.1:5353"
bridge_dns_port = 10053
web_listen_addr = "[::1]:8080"
web_allow_remote = true
default_agent_image = "my-agents"

[vm_defaults]
vcpu = 2
memory_mib = 2048
disk_size = "16G"

[[file_sync]]
host = "~/.gitconfig"
guest = "/root/.gitconfig"

[[file_sync]]
host = "/home/me/.config/agent"
guest = "/root/.config/agent"
mode = "0600"

[agents.claude]
env = { IS_SANDBOX = "1", ANTHROPIC_MODEL = "claude-opus-4-1" }

[agents.aider]
command = ["aider", "--yes-always"]
image = "my-aider"
`;

test('every documented key parses, with its value kept', () => {
  const cfg = parseConfig(FULL, FILE);
  assert.deepEqual(cfg, {
    log_level: 'debug',
    vmm: 'qemu',
    firecracker_bin: '/opt/fc/firecracker',
    qemu_bin: '/usr/local/bin/qemu-system-x86_64',
    vmm_user: 'banger-vmm',
    jailer_bin: '/opt/fc/jailer',
    accel: 'tcg',
    ssh_key_path: '~/.ssh/id_ed25519',
    default_image_name: 'alpine',
    kernel_catalogs: ['kernels.json', 'https://example.org/kernels.json'],
    image_catalogs: ['/etc/banger/images.json'],
    debian_mirror: 'https://mirror.example.org/debian',
    debian_keyring: '/etc/apt/keyrings/mirror.gpg',
    auto_stop_stale_after: '2h30m',
    bridge_name: 'banger1',
    bridge_ip: '10.77.0.1',
    cidr: '10.77.0.0/16',
    tap_pool_size: 4,
    default_dns: ['1.1.1.1', '2606:4700:4700::1111'],
    dns_listen_addr: '127.0.0.1:5353',
    bridge_dns_port: 10053,
    web_listen_addr: '[::1]:8080',
    web_allow_remote: true,
    vm_defaults: { vcpu: 2, memory_mib: 2048, disk_size: '16G' },
    file_sync: [
      { host: '~/.gitconfig', guest: '/root/.gitconfig' },
      { host: '/home/me/.config/agent', guest: '/root/.config/agent', mode: 0o600 },
    ],
    default_agent_image: 'my-agents',
    agents: {
      claude: { env: { IS_SANDBOX: '1', ANTHROPIC_MODEL: 'claude-opus-4-1' } },
      aider: { command: ['aider', '--yes-always'], image: 'my-aider' },
    },
  });
  assert.deepEqual(Object.keys(cfg).sort(), Object.keys(ConfigSchema.shape).sort(), 'FULL must set every ConfigSchema key');
});

test('docs/config.md documents every key of ConfigSchema (and every [vm_defaults] / [[file_sync]] key)', () => {
  // dist/test/unit/config.test.js → project root
  const doc = readFileSync(new URL('../../../docs/config.md', import.meta.url), 'utf8');
  const keys = [...Object.keys(ConfigSchema.shape), 'vcpu', 'memory_mib', 'disk_size', 'host', 'guest', 'mode', 'command', 'env', 'image'];
  const missing = keys.filter((k) => ![`\`${k}\``, `\`[${k}]\``, `\`[[${k}]]\``].some((form) => doc.includes(form)));
  assert.deepEqual(missing, [], 'keys missing from docs/config.md');
});

test('the example config.toml in docs/config.md parses and sets every key', () => {
  const doc = readFileSync(new URL('../../../docs/config.md', import.meta.url), 'utf8');
  const example = /```toml\n([\s\S]*?)```/.exec(doc)?.[1];
  assert.ok(example, 'docs/config.md has a ```toml example');
  const cfg = parseConfig(example, 'docs/config.md');
  assert.deepEqual(Object.keys(cfg).sort(), Object.keys(ConfigSchema.shape).sort());
  assert.equal(cfg.vm_defaults.disk_size, '16G');
  assert.equal(cfg.file_sync.length, 2);
});

test('an unknown key is refused, naming the key and the file', () => {
  refuses('log_levle = "debug"\n', /unknown key "log_levle"/);
  // removed: nothing collected VM stats on a timer (issue 11)
  refuses('stats_poll_interval = "10s"\n', /unknown key "stats_poll_interval"/);
  refuses('[vm_defaults]\nvcpus = 2\n', /unknown key "vm_defaults\.vcpus"/);
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/root/b"\ndirection = "up"\n', /unknown key "file_sync\.0\.direction"/);
});

test('a value of the wrong type names the key and what was expected', () => {
  refuses('tap_pool_size = "two"\n', /key "tap_pool_size"/, /expected number/);
  refuses('log_level = "loud"\n', /key "log_level"/, /"trace"\|"debug"\|"info"\|"warn"\|"error"/);
  refuses('vmm = "kvmtool"\n', /key "vmm"/, /"auto"\|"firecracker"\|"qemu"/);
  refuses('auto_stop_stale_after = "soon"\n', /key "auto_stop_stale_after"/, /expected a duration/);
  refuses('[vm_defaults]\ndisk_size = "big"\n', /key "vm_defaults\.disk_size"/, /expected a size like "8G"/);
  refuses('[vm_defaults]\nvcpu = 1.5\n', /key "vm_defaults\.vcpu"/, /expected int/);
  refuses('[vm_defaults]\nmemory_mib = 64\n', /key "vm_defaults\.memory_mib"/);
  refuses('tap_pool_size = 65\n', /key "tap_pool_size"/);
  refuses('default_dns = ["1.1.1.1", "dns.google"]\n', /key "default_dns\.1"/, /expected IP/);
  refuses('bridge_dns_port = 53\n', /key "bridge_dns_port"/, />=1024|1024/);
  refuses('dns_listen_addr = "localhost:53"\n', /key "dns_listen_addr"/, /expected "IP:PORT"/);
  refuses('web_listen_addr = "127.0.0.1:70000"\n', /key "web_listen_addr"/);
  refuses('web_allow_remote = "yes"\n', /key "web_allow_remote"/);
  assert.equal(parseConfig('web_listen_addr = ""\n', 'x.toml').web_listen_addr, '', '"" turns the web UI off');
  refuses('bridge_ip = "172.30.0.300"\n', /key "bridge_ip"/, /expected an IPv4 address/);
  refuses('cidr = "10.0.0.0/31"\n', /key "cidr"/, /between \/8 and \/30/);
  refuses('[[file_sync]]\nhost = "~/.gitconfig"\n', /key "file_sync\.0\.guest"/);
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/root/b"\nmode = "mirror"\n', /key "file_sync\.0\.mode"/, /octal digits/);
});

test('[[file_sync]]: host paths absolute or ~/, guest paths strictly under /root/ without "..", mode as octal digits', () => {
  const ok = parseConfig('[[file_sync]]\nhost = "/etc/x"\nguest = "/root/a/b"\nmode = "644"\n', FILE).file_sync[0];
  assert.deepEqual(ok, { host: '/etc/x', guest: '/root/a/b', mode: 0o644 });
  refuses('[[file_sync]]\nhost = "relative"\nguest = "/root/x"\n', /key "file_sync\.0\.host"/, /absolute/);
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/etc/passwd"\n', /key "file_sync\.0\.guest"/, /under \/root\//);
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/root"\n', /key "file_sync\.0\.guest"/, /under \/root\//);
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/root/../etc/x"\n', /key "file_sync\.0\.guest"/, /"\.\."/);
  refuses('[[file_sync]]\nhost = "/a"\nguest = "root/x"\n', /key "file_sync\.0\.guest"/, /not absolute/);
  // A TOML integer cannot say whether 600 is octal: only strings are taken.
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/root/x"\nmode = 0o600\n', /key "file_sync\.0\.mode"/);
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/root/x"\nmode = "0800"\n', /key "file_sync\.0\.mode"/, /octal/);
  // The old copy|sync values (never built) say what mode means now.
  refuses('[[file_sync]]\nhost = "/a"\nguest = "/root/x"\nmode = "sync"\n', /key "file_sync\.0\.mode"/, /copied at each VM start/);
});

test('[agents.<name>]: names like resource names, command words and env values without control characters, env keys as names; a new agent needs a command', () => {
  refuses('[agents.Claude]\ncommand = ["x"]', /agents\.Claude/, /uppercase/);
  refuses('[agents."a.b"]\ncommand = ["x"]', /agent name/);
  refuses('[agents.aider]\nimage = "x"', /agents\.aider/, /not a built-in agent/);
  refuses('[agents.claude]\ncommand = []', /at least the program/);
  refuses('[agents.claude]\ncommand = ["claude", "a\\nb"]', /control character/);
  refuses('[agents.claude]\ncommand = [""]', /empty/);
  refuses('[agents.claude]\nenv = { "A-B" = "1" }', /agents\.claude\.env\.A-B/, /variable name/);
  refuses('[agents.claude]\nenv = { A = "x\\ny" }', /control character/);
  refuses('[agents.claude]\nmodel = "x"', /unknown key "agents\.claude\.model"/);
  // Quotes, $() and spaces are fine here: they are quoted on the guest's command line (util/coding-agents.ts).
  const cfg = parseConfig('[agents.pi]\ncommand = ["pi", "--say", "it\'s $(id)"]\nenv = { X = "a b" }', FILE);
  assert.deepEqual(cfg.agents.pi, { command: ['pi', '--say', "it's $(id)"], env: { X: 'a b' } });
});

test('every problem is listed in details, not only the first', () => {
  const e = refuses('tap_pool_size = "two"\nvmm = "nope"\n', /key "(vmm|tap_pool_size)"/);
  assert.ok(Array.isArray(e.details));
  const details = e.details as string[];
  assert.equal(details.length, 2);
  assert.ok(details.some((d) => d.includes('"vmm"')));
  assert.ok(details.some((d) => d.includes('"tap_pool_size"')));
});

test('invalid TOML names the file and the line', () => {
  refuses('log_level = "info"\nvmm = \n', /\(line 2, column \d+\)/, /invalid TOML/);
  refuses('# comment\n\n[vm_defaults\nvcpu = 1\n', /\(line 3, column \d+\)/);
});

test('bridge_name must start with "banger" (banger only manages bridges it owns)', () => {
  refuses('bridge_name = "br0"\n', /key "bridge_name"/, /starting with "banger"/);
  refuses('bridge_name = "docker0"\n', /bridge_name/);
  refuses('bridge_name = "mybanger0"\n', /bridge_name/);
  // Linux interface names are at most 15 characters.
  refuses('bridge_name = "banger0123456789"\n', /bridge_name/);
  assert.equal(parseConfig('bridge_name = "banger-dev"\n', FILE).bridge_name, 'banger-dev');
  assert.equal(parseConfig('bridge_name = "banger012345678"\n', FILE).bridge_name, 'banger012345678');
});

test('loadConfig: BANGER_CONFIG picks the file, an absent file means defaults, errors name the path', async () => {
  const dir = await mkdtemp('/tmp/bg-cfg-');
  try {
    const layout = resolveLayout({ BANGER_HOME: dir });
    assert.equal(layout.configFile, join(dir, 'config', 'config.toml'));
    assert.deepEqual(loadConfig(layout), defaultConfig());

    const alt = join(dir, 'alt.toml');
    await writeFile(alt, 'vmm = "qemu"\n');
    const altLayout = resolveLayout({ BANGER_HOME: dir, BANGER_CONFIG: alt });
    assert.equal(altLayout.configFile, alt);
    assert.equal(loadConfig(altLayout).vmm, 'qemu');

    await mkdir(join(dir, 'config'), { recursive: true });
    await writeFile(layout.configFile, 'qemu_bin = 7\n');
    assert.throws(
      () => loadConfig(layout),
      (e: unknown) => e instanceof BangerError && e.message.includes(layout.configFile) && e.message.includes('"qemu_bin"'),
    );
    // A config path that is a directory is unreadable: the error still names it.
    await rm(layout.configFile);
    await mkdir(layout.configFile);
    assert.throws(
      () => loadConfig(layout),
      (e: unknown) => e instanceof BangerError && e.code === 'invalid_config' && e.message.includes(layout.configFile),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('parseDuration', () => {
  const cases: Array<[string, number | undefined]> = [
    ['90s', 90_000],
    ['15m', 900_000],
    ['2h', 7_200_000],
    ['2h30m', 9_000_000],
    ['1d', 86_400_000],
    ['250ms', 250],
    ['1m30s', 90_000],
    ['1.5h', 5_400_000],
    [' 10s ', 10_000],
    ['off', 0],
    ['0', 0],
    ['', 0],
    ['10', undefined],
    ['5x', undefined],
    ['-5s', undefined],
    ['1h 30m', undefined],
    ['s', undefined],
    ['soon', undefined],
  ];
  for (const [text, want] of cases) assert.equal(parseDuration(text), want, `parseDuration(${JSON.stringify(text)})`);
});

test('parseSize', () => {
  const KiB = 1024;
  const cases: Array<[string, number | undefined]> = [
    ['1048576', 1_048_576],
    ['512M', 512 * KiB ** 2],
    ['512m', 512 * KiB ** 2],
    ['8G', 8 * KiB ** 3],
    ['2GiB', 2 * KiB ** 3],
    ['2GB', 2 * KiB ** 3],
    ['1.5G', 1.5 * KiB ** 3],
    ['4k', 4 * KiB],
    ['1T', KiB ** 4],
    ['100b', 100],
    [' 8G ', 8 * KiB ** 3],
    ['big', undefined],
    ['-1G', undefined],
    ['8P', undefined],
    ['G', undefined],
    ['', undefined],
  ];
  for (const [text, want] of cases) assert.equal(parseSize(text), want, `parseSize(${JSON.stringify(text)})`);
});

test('vmm_user is a plain user name or uid:gid, never something that could become an option', () => {
  assert.equal(parseConfig('vmm_user = "1000:1000"', FILE).vmm_user, '1000:1000');
  assert.equal(parseConfig('', FILE).vmm_user, '');
  assert.equal(parseConfig('', FILE).jailer_bin, 'jailer');
  for (const bad of ['root,x=y', '-daemonize', 'a b', 'Root']) {
    assert.throws(() => parseConfig(`vmm_user = ${JSON.stringify(bad)}`, FILE), /vmm_user/, bad);
  }
});
