import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import type { Command } from 'commander';
import { buildProgram, entriesFor, TOP_LEVEL } from '../../src/cli/program.js';
import { BANGER, ROOT } from '../helpers/banger.js';

/** Everything the CLI's parsing and help depend on, recursively: two equal trees parse and print alike. */
function shape(c: Command): unknown {
  return {
    name: c.name(),
    aliases: c.aliases(),
    description: c.description(),
    usage: c.usage(),
    options: c.options.map((o) => [o.flags, o.description, o.defaultValue, o.negate, o.required, o.optional, o.variadic]),
    arguments: c.registeredArguments.map((a) => [a.name(), a.description, a.required, a.variadic, a.defaultValue]),
    commands: c.commands.map(shape),
  };
}

test('each lazily loaded entry builds its commands exactly as the whole tree has them', async () => {
  const full = await buildProgram();
  const fullNames = full.commands.map((c) => c.name());
  for (const entry of TOP_LEVEL) {
    for (const name of entry.names) {
      const partial = await buildProgram([name, '--help']);
      assert.deepEqual(entriesFor([name]), [entry], `${name} must load only its own module`);
      const mine = partial.commands.find((c) => c.name() === name);
      const theirs = full.commands.find((c) => c.name() === name);
      assert.ok(mine, `${name}: not registered by its own entry (TOP_LEVEL in src/cli/program.ts is out of date)`);
      assert.ok(theirs, `${name}: listed in TOP_LEVEL but not a command of the whole tree`);
      assert.deepEqual(shape(mine), shape(theirs), `${name}: differs from the whole tree`);
      // Every other command it registered belongs to the same module in the whole tree, in the same order.
      const others = partial.commands.map((c) => c.name());
      assert.deepEqual(
        others,
        fullNames.filter((n) => others.includes(n)),
        `${name}: order differs from the whole tree`,
      );
    }
  }
  // Every top-level command is reachable through exactly one entry, except completion (it needs the whole tree).
  for (const name of fullNames) {
    const owners = TOP_LEVEL.filter((e) => e.names.includes(name));
    assert.equal(owners.length, name === 'completion' ? 0 : 1, `${name}: listed by ${owners.length} entries`);
  }
  // Root settings survive a partial tree: "did you mean" and exit-override on every subcommand.
  const partial = await buildProgram(['daemon', 'stauts']);
  const status = partial.commands.find((c) => c.name() === 'daemon');
  assert.throws(
    () => status?.parse(['stauts'], { from: 'user' }),
    (e: { code?: string; message?: string }) => e.code === 'commander.unknownCommand',
  );
});

test('entriesFor: a typo, help, completion, options and no command load the whole tree; --version alone loads none', () => {
  for (const args of [[], ['deamon'], ['help', 'vm'], ['completion', 'bash'], ['--help'], ['-h', 'vm'], ['--version', 'x']]) {
    assert.equal(entriesFor(args), TOP_LEVEL, `banger ${args.join(' ')}`);
  }
  assert.deepEqual(entriesFor(['--version']), []);
  assert.deepEqual(entriesFor(['-V']), []);
});

// The real CLI under a module-load hook: which of banger's modules (and zod) a command line loads.
let dir: string;
before(async () => {
  dir = await mkdtemp('/tmp/bg-lazy-');
  await writeFile(
    join(dir, 'hooks.mjs'),
    "import { appendFileSync } from 'node:fs';\nexport async function load(url, context, next) {\n  appendFileSync(process.env.BG_LOAD_LOG, url + '\\n');\n  return next(url, context);\n}\n",
  );
  await writeFile(
    join(dir, 'register.mjs'),
    `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(join(dir, 'hooks.mjs')).href)});\n`,
  );
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function loadedBy(args: string[]): Promise<{ status: number | null; stdout: string; modules: string[] }> {
  const log = join(dir, `loaded-${args.join('_')}.txt`);
  const r = spawnSync(process.execPath, ['--import', pathToFileURL(join(dir, 'register.mjs')).href, BANGER, ...args], {
    // An empty home: nothing may start a daemon here.
    env: { ...process.env, BANGER_HOME: join(dir, 'home'), BG_LOAD_LOG: log },
    encoding: 'utf8',
  });
  const text = await readFile(log, 'utf8');
  const modules = text
    .split('\n')
    .filter((u) => u.startsWith('file:'))
    .map((u) => u.replace(pathToFileURL(`${ROOT}/`).href, ''));
  return { status: r.status, stdout: r.stdout, modules };
}

const COMMAND_MODULES = ['vm', 'image', 'kernel', 'daemon', 'misc', 'run', 'ssh'].map((m) => `dist/src/cli/commands/${m}.js`);

test('`banger daemon stop` (the client path, no daemon) loads the daemon commands and the client, no other command and no zod', async () => {
  const r = await loadedBy(['daemon', 'stop']);
  assert.equal(r.status, 0);
  assert.equal(r.stdout, 'bangerd is not running\n');
  assert.ok(r.modules.includes('dist/src/cli/commands/daemon.js'), r.modules.join('\n'));
  assert.ok(r.modules.includes('dist/src/client/client.js'), 'the hook saw the client load');
  for (const m of COMMAND_MODULES.filter((m) => !m.endsWith('/daemon.js'))) assert.ok(!r.modules.includes(m), `${m} loaded`);
  assert.deepEqual(
    r.modules.filter((m) => /node_modules\/zod\/|\/api\/(schemas|kernel-schemas)\.js$/.test(m)),
    [],
  );
  // Autostart (child_process, spawn of bangerd) is loaded only when a daemon must be started.
  assert.ok(!r.modules.includes('dist/src/client/autostart.js'));
});

test('`banger --help` loads every command module and still no zod; `banger --version` loads none', async () => {
  const help = await loadedBy(['--help']);
  assert.equal(help.status, 0);
  for (const m of COMMAND_MODULES) assert.ok(help.modules.includes(m), `${m} not loaded for --help`);
  assert.deepEqual(
    help.modules.filter((m) => m.includes('node_modules/zod/')),
    [],
  );
  const version = await loadedBy(['--version']);
  assert.equal(version.status, 0);
  assert.match(version.stdout, /^banger \d/);
  for (const m of COMMAND_MODULES) assert.ok(!version.modules.includes(m), `${m} loaded for --version`);
});
