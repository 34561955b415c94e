/**
 * Command lines answered without building the commander tree: frequent, script-polled ones, in the
 * exact spellings listed (any other spelling, `--help` included, goes through commander as before).
 * Each runs the function its commander action runs; test/unit/cli-fast-path.test.ts checks that
 * commander parses each spelling into that command with the same options. Start-up is most of these
 * commands' time, and commander with its dependencies (child_process, readline, ...) a third of it.
 */
export interface FastPath {
  argv: readonly string[];
  /** The commander command the spelling names, e.g. "daemon status". */
  command: string;
  /** The options commander passes that command's action for this spelling. */
  opts: Record<string, unknown>;
  run(): Promise<void>;
}

export const FAST_PATHS: readonly FastPath[] = [
  {
    argv: ['daemon', 'status'],
    command: 'daemon status',
    opts: {},
    run: async () => (await import('./commands/daemon-status.js')).showDaemonStatus({}),
  },
  {
    argv: ['daemon', 'status', '--json'],
    command: 'daemon status',
    opts: { json: true },
    run: async () => (await import('./commands/daemon-status.js')).showDaemonStatus({ json: true }),
  },
];

export function fastPathFor(args: readonly string[]): FastPath | undefined {
  return FAST_PATHS.find((f) => f.argv.length === args.length && f.argv.every((a, i) => a === args[i]));
}
