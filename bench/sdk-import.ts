import { join } from 'node:path';
import { ROOT } from './home.js';
import { type Metric, type MetricBenchmark, run, stats } from './lib.js';

const PROBE = join(ROOT, 'dist', 'bench', 'sdk-import-probe.js');
const SAMPLES = 15;

/**
 * What `import('banger')` costs a program: the import itself, timed inside a fresh node (median of
 * 15), against the ≤ 50 ms target of issue 13; and the whole process (start + import) against a
 * bare `node -e 0`. No daemon is involved: importing the SDK connects to nothing.
 */
export function sdkImportBenchmark(): MetricBenchmark {
  return {
    kind: 'metrics',
    name: 'sdk-import',
    description: "`import('banger')` in a fresh node: the SDK's load time (target ≤ 50 ms)",
    async measure(): Promise<Metric[]> {
      const inside: number[] = [];
      const whole: number[] = [];
      const bare: number[] = [];
      await run(process.execPath, [PROBE]); // warm the file cache
      for (let i = 0; i < SAMPLES; i++) {
        let t = performance.now();
        inside.push(Number(await run(process.execPath, [PROBE])));
        whole.push(performance.now() - t);
        t = performance.now();
        await run(process.execPath, ['-e', '0']);
        bare.push(performance.now() - t);
      }
      return [
        {
          name: "import('banger')",
          value: stats(inside).median,
          unit: 'ms',
          target: 50,
          detail: `timed inside the process around the import, median of ${SAMPLES} fresh nodes (p90 ${stats(inside).p90.toFixed(1)} ms)`,
        },
        {
          name: 'node + import',
          value: stats(whole).median,
          unit: 'ms',
          reference: { label: 'node -e 0', value: stats(bare).median },
          detail: `wall time of the whole process, median of ${SAMPLES}`,
        },
      ];
    },
  };
}
