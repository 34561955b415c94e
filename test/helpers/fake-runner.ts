import { PassThrough } from 'node:stream';
import {
  CommandError,
  type CommandRunner,
  type ExitStatus,
  missingTool,
  type RunOptions,
  type RunResult,
  type SpawnedCommand,
  type SpawnOptions,
  type StdioMode,
} from '../../src/host/runner.js';

/** How a fake command ends: its output and exit, or 'missing' (the tool is not installed). */
export type FakeOutcome = { code?: number; signal?: NodeJS.Signals | null; stdout?: string | Buffer; stderr?: string } | 'missing';

/**
 * A fake CommandRunner: no process is started; `answer` decides how each command ends (given its
 * name, argv and the bytes written to its stdin), the same way for `run` and `spawn`. Every call is
 * recorded in `calls` as [command, ...args].
 */
export class FakeRunner implements CommandRunner {
  readonly calls: string[][] = [];

  constructor(private readonly answer: (command: string, args: readonly string[], stdin: Buffer) => FakeOutcome | Promise<FakeOutcome>) {}

  async run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    this.calls.push([command, ...args]);
    const input = options.input === undefined ? Buffer.alloc(0) : Buffer.from(options.input);
    const outcome = await this.answer(command, args, input);
    if (outcome === 'missing') throw missingTool(command, options.neededFor);
    const result: RunResult = { code: outcome.code ?? 0, signal: outcome.signal ?? null, stdout: String(outcome.stdout ?? ''), stderr: outcome.stderr ?? '' };
    if (result.code !== 0 && !options.allowFailure) throw new CommandError(command, args, result);
    return result;
  }

  spawn<I extends StdioMode = 'pipe', O extends StdioMode = 'pipe', E extends StdioMode = 'pipe'>(
    command: string,
    args: readonly string[],
    options: SpawnOptions<I, O, E> = {},
  ): SpawnedCommand<I, O, E> {
    this.calls.push([command, ...args]);
    const stdin = options.stdin === 'ignore' ? null : new PassThrough();
    const stdout = options.stdout === 'ignore' ? null : new PassThrough();
    const stderr = options.stderr === 'ignore' ? null : new PassThrough();
    // The fake "reads" its whole stdin (when piped) before it answers, as a filter would.
    const input = new Promise<Buffer>((resolve) => {
      if (!stdin) return resolve(Buffer.alloc(0));
      const chunks: Buffer[] = [];
      stdin.on('data', (c: Buffer) => chunks.push(c));
      stdin.on('end', () => resolve(Buffer.concat(chunks)));
    });
    const done = (async (): Promise<ExitStatus> => {
      const outcome = await this.answer(command, args, await input);
      if (outcome === 'missing') {
        stdout?.end();
        stderr?.end();
        throw missingTool(command, options.neededFor);
      }
      stderr?.end(outcome.stderr ?? '');
      stdout?.end(outcome.stdout ?? '');
      return { code: outcome.signal ? null : (outcome.code ?? 0), signal: outcome.signal ?? null };
    })();
    return { stdin, stdout, stderr, done, kill: () => undefined } as SpawnedCommand<I, O, E>;
  }
}
