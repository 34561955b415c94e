/**
 * The Firecracker jailer's command line, as its documentation describes it (firecracker
 * docs/jailer.md, "Jailer Usage" and "Jailer Operation"). There is no machine-readable spec of the
 * jailer, so this typed description IS the reference the contract tests hold banger's argv builder
 * (src/vmm/firecracker/jailer.ts) to; the FAKE jailer (fake-jailer-bin.ts) parses with it.
 * Written from the documentation, independently of the builder, so a builder mistake cannot
 * validate itself.
 */
export interface JailerArgument {
  flag: string;
  /** `flag` takes no value. */
  boolean?: boolean;
  required?: boolean;
  repeatable?: boolean;
  /** What a value must look like. */
  value?: RegExp;
  doc: string;
}

const UINT = /^\d{1,10}$/;
const ABSOLUTE_PATH = /^\/[^\0]*$/;

export const JAILER_ARGUMENTS: readonly JailerArgument[] = [
  { flag: '--id', required: true, value: /^[A-Za-z0-9-]{1,64}$/, doc: 'unique VM id: alphanumerics and hyphens, at most 64 characters' },
  {
    flag: '--exec-file',
    required: true,
    value: /^[^\0]+$/,
    doc: 'the Firecracker binary to copy into the jail and exec; its file name must contain "firecracker"',
  },
  { flag: '--uid', required: true, value: UINT, doc: 'uid the jailer switches to as it execs the target binary' },
  { flag: '--gid', required: true, value: UINT, doc: 'gid the jailer switches to as it execs the target binary' },
  { flag: '--parent-cgroup', value: /^[^/\0][^\0]*$/, doc: 'relative path of the parent cgroup (default: the exec file name)' },
  { flag: '--cgroup-version', value: /^[12]$/, doc: '"1" (default) or "2"' },
  { flag: '--cgroup', repeatable: true, value: /^[a-z_]+\.[a-z_.]+=.*$/, doc: '<cgroup_file>=<value>, e.g. cpuset.cpus=0' },
  { flag: '--chroot-base-dir', value: ABSOLUTE_PATH, doc: 'base folder of the chroot jails (default /srv/jailer)' },
  { flag: '--netns', value: ABSOLUTE_PATH, doc: 'path to a network namespace handle to join' },
  { flag: '--resource-limit', repeatable: true, value: /^(fsize|no-file)=\d+$/, doc: '<resource>=<value>: fsize or no-file' },
  { flag: '--daemonize', boolean: true, doc: 'setsid() and stdio to /dev/null' },
  { flag: '--new-pid-ns', boolean: true, doc: 'exec the binary in a new PID namespace' },
];

export const DEFAULT_CHROOT_BASE = '/srv/jailer';

export interface ParsedJailerArgv {
  values: Map<string, string[]>;
  flags: Set<string>;
  /** Everything after `--`: forwarded to Firecracker (which the jailer also passes --id). */
  firecrackerArgs: string[];
}

/** Parses and validates a jailer argv against JAILER_ARGUMENTS; the list of problems is empty when valid. */
export function parseJailerArgv(argv: readonly string[]): { parsed: ParsedJailerArgv; errors: string[] } {
  const byFlag = new Map(JAILER_ARGUMENTS.map((a) => [a.flag, a]));
  const parsed: ParsedJailerArgv = { values: new Map(), flags: new Set(), firecrackerArgs: [] };
  const errors: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i] as string;
    if (token === '--') {
      parsed.firecrackerArgs = argv.slice(i + 1);
      break;
    }
    const spec = byFlag.get(token);
    if (!spec) {
      errors.push(`unexpected argument ${JSON.stringify(token)}`);
      continue;
    }
    if (spec.boolean) {
      parsed.flags.add(token);
      continue;
    }
    const value = argv[i + 1];
    i++;
    if (value === undefined) {
      errors.push(`${token} needs a value`);
      continue;
    }
    if (spec.value && !spec.value.test(value)) errors.push(`invalid ${token} ${JSON.stringify(value)}: ${spec.doc}`);
    const seen = parsed.values.get(token) ?? [];
    if (seen.length > 0 && !spec.repeatable) errors.push(`${token} given twice`);
    parsed.values.set(token, [...seen, value]);
  }
  for (const a of JAILER_ARGUMENTS) if (a.required && !parsed.values.has(a.flag)) errors.push(`${a.flag} is required`);
  const exec = parsed.values.get('--exec-file')?.[0];
  if (exec !== undefined && !(exec.split('/').pop() ?? '').includes('firecracker')) errors.push(`the --exec-file name must contain "firecracker": ${exec}`);
  if (parsed.firecrackerArgs.some((a) => a === '--id' || a.startsWith('--id='))) errors.push('--id after "--": the jailer already passes --id to Firecracker');
  return { parsed, errors };
}

/** `<chroot_base>/<exec_file_name>/<id>/root`: where the jailer chroots Firecracker. */
export function chrootDirOf(p: ParsedJailerArgv): string {
  const base = p.values.get('--chroot-base-dir')?.[0] ?? DEFAULT_CHROOT_BASE;
  const execName = (p.values.get('--exec-file')?.[0] ?? '').split('/').pop() ?? '';
  return `${base}/${execName}/${p.values.get('--id')?.[0]}/root`;
}
