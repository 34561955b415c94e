/**
 * Coding agents in VMs (docs/agents.md): the built-in presets (how each agent starts in a
 * sandbox, its environment, its tmux session, the host files that carry its login), the shell
 * quoting of their command lines, and the tmux argv the daemon runs in the guest. Pure data and
 * pure functions: the CLI, the daemon and `banger doctor` all read them.
 */
import { BangerError } from '../api/errors.js';
import { dnsLabelProblem } from './ids.js';

/** The catalog image coding agents run in by default (src/images/catalog.ts builds it: Debian 12, tmux, Node LTS, the four CLIs below). */
export const AGENTS_IMAGE_NAME = 'debian-bookworm-agents';

/** The tmux user option that names the command a restored session runs again (set by the daemon, read by the image's restore). */
export const TMUX_COMMAND_OPTION = '@banger-command';

/** One host file or directory an agent keeps its login or settings in; `~/` is the host user's home, the guest side is /root. */
export interface AgentAuthPath {
  /** `~/…` on the host. */
  host: string;
  /** Absolute, under /root (where `[[file_sync]]` may write). */
  guest: string;
  kind: 'file' | 'dir';
  /** Permission bits every copied file gets (`[[file_sync]]` `mode`), for credentials: "0600". Absent: the host file's own. */
  mode?: string;
  /** Why it is synced, for docs and doctor. */
  what: string;
}

export interface AgentPreset {
  name: string;
  /** Human name, for help and docs. */
  title: string;
  /** The npm package the agents image installs (docs). */
  npmPackage: string;
  /** argv that starts it interactively, inside a VM that is the sandbox. */
  command: string[];
  /** Set in its environment (on the command line, so a restored session gets it too). */
  env: Record<string, string>;
  authPaths: AgentAuthPath[];
}

/** An agent as the daemon starts it: a preset with the config's overrides, or one the config defines. */
export interface AgentDefinition {
  name: string;
  command: string[];
  env: Record<string, string>;
  /** The image `vm run --agent` creates its VM from. */
  image: string;
  /** The tmux session it runs in: the agent's name. */
  session: string;
  builtin: boolean;
}

/** `[agents.<name>]` in config.toml, as the config module validated it. */
export interface AgentOverride {
  command?: string[];
  env?: Record<string, string>;
  image?: string;
}

const home = (rel: string, kind: 'file' | 'dir', what: string, mode?: string): AgentAuthPath => ({
  host: `~/${rel}`,
  guest: `/root/${rel}`,
  kind,
  what,
  ...(mode ? { mode } : {}),
});

/**
 * The built-in agents. Each runs as root in the VM with its own permission prompts off: the VM is
 * the sandbox. Claude Code refuses --dangerously-skip-permissions as root unless IS_SANDBOX=1 says
 * it runs in one; codex's flag turns off both its approvals and its own (landlock) sandbox.
 * A directory entry keeps each file's host mode; the credentials file inside it is listed again
 * with "0600", after the directory, so it is 0600 in the guest whatever its host mode.
 */
export const AGENT_PRESETS: readonly AgentPreset[] = [
  {
    name: 'claude',
    title: 'Claude Code',
    npmPackage: '@anthropic-ai/claude-code',
    command: ['claude', '--dangerously-skip-permissions'],
    env: { IS_SANDBOX: '1' },
    authPaths: [
      home('.claude.json', 'file', 'account and settings', '0600'),
      home('.claude', 'dir', 'settings, commands, agents'),
      home('.claude/.credentials.json', 'file', 'login token', '0600'),
    ],
  },
  {
    name: 'opencode',
    title: 'opencode',
    npmPackage: 'opencode-ai',
    command: ['opencode'],
    env: {},
    authPaths: [home('.config/opencode', 'dir', 'configuration'), home('.local/share/opencode/auth.json', 'file', 'provider logins', '0600')],
  },
  {
    name: 'pi',
    title: 'pi',
    npmPackage: '@mariozechner/pi-coding-agent',
    command: ['pi'],
    env: {},
    authPaths: [home('.pi', 'dir', 'settings, models, extensions'), home('.pi/agent/auth.json', 'file', 'provider logins', '0600')],
  },
  {
    name: 'codex',
    title: 'Codex CLI',
    npmPackage: '@openai/codex',
    command: ['codex', '--dangerously-bypass-approvals-and-sandbox'],
    env: {},
    authPaths: [home('.codex', 'dir', 'configuration'), home('.codex/auth.json', 'file', 'login token', '0600')],
  },
];

export const presetOf = (name: string): AgentPreset | undefined => AGENT_PRESETS.find((p) => p.name === name);

// ---- validation ---------------------------------------------------------------------------

/** Why an agent name cannot be one (it names a tmux session and appears on command lines), or undefined. */
export function agentNameProblem(name: string): string | undefined {
  if (name.length > 32) return 'is longer than 32 characters';
  return dnsLabelProblem(name);
}

export const ENV_KEY_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
/** Longest command line the daemon builds (tmux keeps it in a session option). */
export const MAX_COMMAND_LINE = 8192;

/** Why a word cannot go on a command line (control characters: a newline would end the command), or undefined. */
export function shellWordProblem(word: string): string | undefined {
  if (word.length > 4096) return 'is longer than 4096 characters';
  if (/[\x00-\x1f\x7f]/.test(word)) return 'contains a control character (newline, tab, escape…)';
  return undefined;
}

/** Words a POSIX shell reads back unchanged without quotes (no `=`: a first word with one would be an assignment). */
const BARE_WORD = /^[A-Za-z0-9_@%+:,./-]+$/;

/**
 * One word for `sh -c`, read back by the shell as exactly this string: bare when it holds only
 * characters no shell gives a meaning to, else in single quotes (inside which nothing is special;
 * a single quote is closed, escaped, reopened). Control characters are refused, not quoted.
 */
export function shellQuote(word: string): string {
  const problem = shellWordProblem(word);
  if (problem) throw new BangerError('bad_request', `a command line word ${problem}: ${JSON.stringify(word.slice(0, 80))}`);
  if (BARE_WORD.test(word)) return word;
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** `K=v … argv…` as one `sh -c` command line: the environment as assignments, every word quoted. */
export function agentCommandLine(command: readonly string[], env: Readonly<Record<string, string>>): string {
  if (command.length === 0) throw new BangerError('bad_request', 'an agent command is empty');
  const assignments = Object.entries(env).map(([k, v]) => {
    if (!ENV_KEY_PATTERN.test(k)) throw new BangerError('bad_request', `environment variable name ${JSON.stringify(k.slice(0, 80))} is not a valid name`);
    return `${k}=${shellQuote(v)}`;
  });
  const line = [...assignments, ...command.map(shellQuote)].join(' ');
  if (line.length > MAX_COMMAND_LINE) throw new BangerError('bad_request', `the agent's command line is longer than ${MAX_COMMAND_LINE} characters`);
  return line;
}

/** What stands for an environment value outside the guest (`NAME=…`). */
export const REDACTED_VALUE = '…';

/** Assignments shown as they are: the presets' own values (IS_SANDBOX=1), which are not secrets. */
const VISIBLE_ASSIGNMENTS = new Set(AGENT_PRESETS.flatMap((p) => Object.entries(p.env).map(([k, v]) => `${k}=${shellQuote(v)}`)));

/**
 * Where the shell word starting at `i` ends. Quotes and backslashes are followed as sh reads them;
 * an unterminated quote, or an unquoted character that could start a substitution or another
 * command (`$ \` ; | & < > ( )`), makes the word run to the end of the line: when in doubt, more is
 * hidden, never less.
 */
function shellWordEnd(s: string, i: number): number {
  while (i < s.length) {
    const c = s[i] as string;
    if (c === ' ' || c === '\t' || c === '\n') return i;
    if (c === '\\') i += 2;
    else if (c === "'") {
      const close = s.indexOf("'", i + 1);
      if (close < 0) return s.length;
      i = close + 1;
    } else if (c === '"') {
      i++;
      while (i < s.length && s[i] !== '"') i += s[i] === '\\' ? 2 : 1;
      if (i >= s.length) return s.length;
      i++;
    } else if ('$`;|&<>()'.includes(c)) return s.length;
    else i++;
  }
  return s.length;
}

/**
 * A command line as banger shows it outside the guest: the values of its leading `NAME=value`
 * assignments (an agent's `[agents.X] env`, possibly API keys) become `NAME=…`, except the
 * presets' own. Used on the line the daemon builds and on the `@banger-command` a guest reports
 * (guest data: any quoting, hostile or cut short).
 */
export function redactAssignments(line: string): string {
  const shown: string[] = [];
  let rest = line;
  for (;;) {
    const lead = /^[ \t]*/.exec(rest)?.[0].length ?? 0;
    const name = /^([A-Za-z_][A-Za-z0-9_]*)=/.exec(rest.slice(lead));
    if (!name) break;
    const end = shellWordEnd(rest, lead + name[0].length);
    const word = rest.slice(lead, end);
    shown.push(VISIBLE_ASSIGNMENTS.has(word) ? word : `${name[1]}=${REDACTED_VALUE}`);
    rest = rest.slice(end);
  }
  if (!shown.length) return line;
  const tail = rest.trimStart();
  return tail ? `${shown.join(' ')} ${tail}` : shown.join(' ');
}

// ---- definitions ----------------------------------------------------------------------------

/**
 * The agents a daemon knows: every preset with its `[agents.<name>]` overrides (command and image
 * replace the preset's, env is added to it), then the names the config adds (which must give a
 * command). `defaultImage` is `default_agent_image`.
 */
export function resolveAgents(overrides: Readonly<Record<string, AgentOverride>>, defaultImage: string = AGENTS_IMAGE_NAME): AgentDefinition[] {
  const out: AgentDefinition[] = [];
  for (const p of AGENT_PRESETS) {
    const o = overrides[p.name] ?? {};
    out.push({
      name: p.name,
      command: o.command ?? p.command,
      // Added to the preset's (IS_SANDBOX stays unless replaced): a model or a key is the usual addition.
      env: { ...p.env, ...o.env },
      image: o.image ?? defaultImage,
      session: p.name,
      builtin: true,
    });
  }
  for (const [name, o] of Object.entries(overrides)) {
    if (presetOf(name)) continue;
    if (!o.command) throw new BangerError('invalid_config', `agent "${name}" is not a built-in one and has no command`, { fix: `set agents.${name}.command` });
    out.push({ name, command: o.command, env: o.env ?? {}, image: o.image ?? defaultImage, session: name, builtin: false });
  }
  return out;
}

// ---- tmux in the guest ----------------------------------------------------------------------

/** `tmux has-session`: exit 0 when the session exists (`=` matches the name exactly, never a prefix). */
export const tmuxHasSessionArgv = (session: string): string[] => ['tmux', 'has-session', '-t', `=${session}`];

/**
 * One tmux invocation that creates the session running the command line and records the line in
 * the session's `@banger-command` option (so a restore after `vm restart` runs it again): one
 * command queue, so the option is set even when the agent exits at once.
 */
export function tmuxNewSessionArgv(session: string, cwd: string, commandLine: string): string[] {
  return [
    'tmux',
    'new-session',
    '-d',
    '-s',
    session,
    '-c',
    cwd,
    '--',
    'sh',
    '-c',
    commandLine,
    ';',
    'set-option',
    '-t',
    `=${session}:`,
    TMUX_COMMAND_OPTION,
    commandLine,
  ];
}

/** Field separator of the list format: the unit separator, which no session name or option here contains. */
const SEP = '\x1f';
export const TMUX_LIST_FORMAT = ['#{session_name}', '#{session_windows}', '#{session_attached}', '#{session_created}', `#{${TMUX_COMMAND_OPTION}}`].join(SEP);
export const tmuxListSessionsArgv = (): string[] => ['tmux', 'list-sessions', '-F', TMUX_LIST_FORMAT];
/** Sessions reported at most (a guest may have any number; the rest are dropped). */
export const MAX_LISTED_SESSIONS = 100;

export interface TmuxSession {
  name: string;
  windows: number;
  /** Clients attached now. */
  attached: number;
  /** ISO time, when tmux gave one. */
  createdAt: string | null;
  /** Its `@banger-command`, when banger started it. */
  command: string | null;
}

/**
 * Drops control and format characters (C0, C1, bidi overrides and marks, zero-width ones) and line
 * and paragraph separators, as readiness does, and caps length: session names and options are guest
 * data, and a bidi override or a hidden character would make a printed name or command read as
 * something else.
 */
function clean(s: string, max: number): string {
  return s.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, '').slice(0, max);
}

const count = (s: string): number => {
  const n = Number(s);
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
};

/** Parses `tmux list-sessions -F TMUX_LIST_FORMAT` output (hostile: bounded, malformed lines skipped). */
export function parseTmuxSessions(stdout: string): TmuxSession[] {
  const out: TmuxSession[] = [];
  for (const line of stdout.split('\n')) {
    if (out.length >= MAX_LISTED_SESSIONS) break;
    const f = line.split(SEP);
    if (f.length !== 5) continue;
    const [name, windows, attached, created, command] = f as [string, string, string, string, string];
    const cleanName = clean(name, 128);
    if (!cleanName) continue;
    const createdSec = count(created);
    out.push({
      name: cleanName,
      windows: count(windows),
      attached: count(attached),
      createdAt: createdSec > 0 && createdSec < 1e11 ? new Date(createdSec * 1000).toISOString() : null,
      // Its environment values stay in the guest (docs/agents.md, Security).
      command: command ? redactAssignments(clean(command, MAX_COMMAND_LINE)) : null,
    });
  }
  return out;
}

/** The argv that attaches a terminal to the session (under a PTY); tmux's own detach (prefix d) leaves it running. */
export const tmuxAttachArgv = (session: string): string[] => ['tmux', 'attach-session', '-t', `=${session}`];

/**
 * Why a guest working directory cannot be used, or undefined. It goes to `tmux new-session -c`,
 * which expands its argument as a format (`#(…)` would run a command, `#{…}` change the path) and
 * which ends a command at an argument ending in `;`: both are refused rather than escaped.
 */
export function guestCwdProblem(cwd: string): string | undefined {
  if (!cwd.startsWith('/')) return 'is not an absolute path';
  if (cwd.length > 4096) return 'is longer than 4096 characters';
  if (cwd.includes('#')) return 'contains "#" (tmux would read it as a format): use a directory without one';
  if (cwd.endsWith(';')) return 'ends with ";" (tmux would read it as a command separator): use a directory without one';
  return shellWordProblem(cwd);
}

/** A `[[file_sync]]` entry for one auth path, as TOML (docs and doctor's hints). */
export function fileSyncToml(p: AgentAuthPath): string {
  return ['[[file_sync]]', `host = "${p.host}"`, `guest = "${p.guest}"`, ...(p.mode ? [`mode = "${p.mode}"`] : [])].join('\n');
}
