import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parse as parseToml, TomlError } from 'smol-toml';
import { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { guestPathUnderProblem } from '../api/files-wire.js';
import { AGENTS_IMAGE_NAME, agentNameProblem, ENV_KEY_PATTERN, presetOf, shellWordProblem } from '../util/coding-agents.js';
import { parseDuration, parseSize } from '../util/duration.js';
import type { Layout } from './layout.js';

const duration = (key: string) =>
  z.string().refine((v) => parseDuration(v) !== undefined, {
    message: `expected a duration like "30s", "15m", "2h" or "off" for ${key}`,
  });
const size = z.string().refine((v) => parseSize(v) !== undefined, { message: 'expected a size like "8G" or "512M"' });
const hostPort = z.string().refine(
  (v) => {
    const m = /^(.*):(\d{1,5})$/.exec(v);
    return !!m && isIP((m[1] as string).replace(/^\[|\]$/g, '')) !== 0 && Number(m[2]) <= 65535;
  },
  { message: 'expected "IP:PORT", e.g. "127.0.0.1:42069"' },
);
const cidr = z.string().refine(
  (v) => {
    const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d{1,2})$/.exec(v);
    return !!m && isIP(m[1] as string) === 4 && Number(m[2]) >= 8 && Number(m[2]) <= 30;
  },
  { message: 'expected an IPv4 CIDR with a prefix between /8 and /30, e.g. "172.30.0.0/24"' },
);

/**
 * A `vmm_user`: a user name as useradd accepts it, or numeric `uid:gid` (both forms QEMU's -runas
 * and banger's jailer set-up take). Checked before it reaches any argv.
 */
export const VMM_USER_PATTERN = /^(?:[a-z_][a-z0-9_-]{0,30}\$?|\d{1,10}:\d{1,10})$/;

/** Where `[[file_sync]]` entries may write in the guest: root's home, which banger's work disk holds. */
export const FILE_SYNC_GUEST_ROOT = '/root';

/**
 * One `[[file_sync]]` entry. `mode` is the files' permission bits as octal digits in a string
 * ("0600"): a TOML integer cannot tell 600 from 0o600. It once meant "copy"|"sync", which was
 * never built: those values are refused with a message saying what mode is now.
 */
export const FileSyncEntrySchema = z
  .object({
    host: z.string().refine((v) => v.startsWith('/') || v.startsWith('~/'), { message: 'expected an absolute host path or one starting with "~/"' }),
    guest: z.string().superRefine((v, ctx) => {
      const problem = guestPathUnderProblem(v, FILE_SYNC_GUEST_ROOT);
      if (problem) ctx.addIssue({ code: 'custom', message: `expected a guest path under ${FILE_SYNC_GUEST_ROOT}/ (this one ${problem})` });
    }),
    mode: z
      .string()
      .superRefine((v, ctx) => {
        if (v === 'copy' || v === 'sync')
          ctx.addIssue({
            code: 'custom',
            message: `"${v}" is no longer a value of mode: every entry is copied at each VM start; mode is now the files' permissions, e.g. "0600"`,
          });
        else if (!/^0?[0-7]{3}$/.test(v))
          ctx.addIssue({ code: 'custom', message: 'expected permission bits as octal digits in a string, e.g. "0600" or "644"' });
      })
      .transform((v) => Number.parseInt(v, 8))
      .optional(),
  })
  .strict();
export type FileSyncEntry = z.infer<typeof FileSyncEntrySchema>;

const commandWord = z.string().superRefine((v, ctx) => {
  const problem = v === '' ? 'is empty' : shellWordProblem(v);
  if (problem) ctx.addIssue({ code: 'custom', message: `a command word ${problem}` });
});

/**
 * `[agents.<name>]`: overrides of a built-in coding agent (util/coding-agents.ts) or a new one
 * (docs/agents.md). Every value reaches a guest shell command line, quoted; control characters and
 * bad variable names are refused here, where the user can fix them.
 */
export const AgentConfigSchema = z
  .object({
    command: z.array(commandWord).min(1, 'expected at least the program, e.g. ["claude"]').max(64).optional(),
    env: z
      .record(z.string(), z.string())
      .superRefine((env, ctx) => {
        for (const [k, v] of Object.entries(env)) {
          if (!ENV_KEY_PATTERN.test(k))
            ctx.addIssue({ code: 'custom', path: [k], message: 'expected a variable name (letters, digits, _; not first a digit)' });
          const problem = shellWordProblem(v);
          if (problem) ctx.addIssue({ code: 'custom', path: [k], message: `the value ${problem}` });
        }
      })
      .optional(),
    image: z.string().min(1).optional(),
  })
  .strict();
export type AgentConfig = z.infer<typeof AgentConfigSchema>;

const AgentsSchema = z.record(z.string(), AgentConfigSchema).superRefine((agents, ctx) => {
  for (const [name, a] of Object.entries(agents)) {
    const problem = agentNameProblem(name);
    if (problem) ctx.addIssue({ code: 'custom', path: [name], message: `an agent name ${problem}` });
    else if (!presetOf(name) && !a.command)
      ctx.addIssue({
        code: 'custom',
        path: [name],
        message: 'is not a built-in agent (claude, opencode, pi, codex): give its command, e.g. command = ["aider"]',
      });
  }
});

/** The built-in image (images/catalog.ts) that `default_image_name` names unless configured. */
export const DEFAULT_IMAGE_NAME = 'debian-bookworm';

/** Every key is optional; documented in docs/config.md. Unknown keys are errors (typos must not pass silently). */
export const ConfigSchema = z
  .object({
    log_level: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
    vmm: z.enum(['auto', 'firecracker', 'qemu']).default('auto'),
    firecracker_bin: z.string().min(1).default('firecracker'),
    qemu_bin: z.string().min(1).default('qemu-system-x86_64'),
    /** Root daemon only: the user QEMU (-runas) and a jailed Firecracker (--uid/--gid) run as. Empty: the daemon's own user. */
    vmm_user: z.string().regex(VMM_USER_PATTERN, 'expected a user name (e.g. "banger-vmm") or "uid:gid"').or(z.literal('')).default(''),
    /** Firecracker's jailer (a name on PATH or a path); used when found and the daemon is root. Empty: never. */
    jailer_bin: z.string().default('jailer'),
    accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    ssh_key_path: z.string().min(1).optional(),
    default_image_name: z.string().min(1).default(DEFAULT_IMAGE_NAME),
    /** Extra kernel catalog files (paths or http(s) URLs); their entries add to, and by name override, the built-in ones. */
    kernel_catalogs: z.array(z.string().min(1)).default([]),
    /** Extra image catalog files (paths or http(s) URLs), same rules as kernel_catalogs. */
    image_catalogs: z.array(z.string().min(1)).default([]),
    /** Debian mirror used by the debian-index kernel entries and the image recipes. */
    debian_mirror: z.string().url().default('http://deb.debian.org/debian'),
    /** Keyring that must have signed the mirror's InRelease (the index chain is verified like apt does). */
    debian_keyring: z.string().min(1).default('/usr/share/keyrings/debian-archive-keyring.gpg'),
    auto_stop_stale_after: duration('auto_stop_stale_after').default('off'),
    bridge_name: z
      .string()
      .regex(/^banger[a-z0-9_-]{0,9}$/, 'expected a name starting with "banger" (at most 15 characters): banger only manages bridges it owns')
      .default('banger0'),
    bridge_ip: z
      .string()
      .refine((v) => isIP(v) === 4, { message: 'expected an IPv4 address' })
      .default('172.30.0.1'),
    cidr: cidr.default('172.30.0.0/24'),
    tap_pool_size: z.number().int().min(0).max(64).default(2),
    default_dns: z.array(z.string().refine((v) => isIP(v) !== 0, { message: 'expected IP addresses' })).default([]),
    dns_listen_addr: hostPort.default('127.0.0.1:42069'),
    bridge_dns_port: z.number().int().min(1024).max(65_535).default(42053),
    /** Where the web UI listens ("" = off; port 0 = a free port); a non-loopback host needs web_allow_remote. */
    web_listen_addr: z.union([z.literal(''), hostPort]).default('127.0.0.1:42070'),
    /** Lets web_listen_addr be a non-loopback address (docs/web.md): off, the daemon refuses to start with one. */
    web_allow_remote: z.boolean().default(false),
    vm_defaults: z
      .object({
        vcpu: z.number().int().min(1).max(64).optional(),
        memory_mib: z
          .number()
          .int()
          .min(128)
          .max(1024 * 1024)
          .optional(),
        disk_size: size.optional(),
      })
      .strict()
      .default({}),
    /** Host files and directories copied into every VM at each start (file-sync.ts). */
    file_sync: z.array(FileSyncEntrySchema).default([]),
    /** The image `vm run --agent` uses unless the agent's own `image` says otherwise (docs/agents.md). */
    default_agent_image: z.string().min(1).default(AGENTS_IMAGE_NAME),
    /** `[agents.<name>]`: coding agents' command, environment and image (util/coding-agents.ts has the built-in ones). */
    agents: AgentsSchema.default({}),
  })
  .strict();

export type Config = z.infer<typeof ConfigSchema>;

export function defaultConfig(): Config {
  return ConfigSchema.parse({});
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const key = issue.path.join('.') || '(top level)';
  if (issue.code === 'unrecognized_keys') {
    const keys = (issue as { keys: string[] }).keys;
    const prefix = issue.path.length ? `${issue.path.join('.')}.` : '';
    return `unknown key ${keys.map((k) => `"${prefix}${k}"`).join(', ')}: see docs/config.md for the valid keys`;
  }
  return `key "${key}": ${issue.message}`;
}

/** Parses config text; errors name the file, the key and what was expected. */
export function parseConfig(text: string, file: string): Config {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (e) {
    const where = e instanceof TomlError ? ` (line ${e.line}, column ${e.column})` : '';
    const first = (e as Error).message.split('\n')[0];
    throw new BangerError('invalid_config', `${file}${where}: invalid TOML: ${first}`, {
      fix: `fix the syntax in ${file}`,
    });
  }
  const res = ConfigSchema.safeParse(raw);
  if (!res.success) {
    const first = res.error.issues[0] as z.core.$ZodIssue;
    throw new BangerError('invalid_config', `${file}: ${describeIssue(first)}`, {
      fix: `edit ${file}; every key is optional and documented in docs/config.md`,
      details: res.error.issues.map(describeIssue),
    });
  }
  return res.data;
}

export function loadConfig(layout: Layout): Config {
  let text: string;
  try {
    text = readFileSync(layout.configFile, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return defaultConfig();
    throw new BangerError('invalid_config', `cannot read ${layout.configFile}: ${(e as Error).message}`);
  }
  return parseConfig(text, layout.configFile);
}
