import { vmCpBenchmark } from './cp.js';
import { daemonMemoryBenchmark } from './daemon-memory.js';
import { BANGER, daemonHome } from './home.js';
import { imagePullBenchmark } from './image-pull.js';
import { type AnyBenchmark, run } from './lib.js';
import { sdkImportBenchmark } from './sdk-import.js';
import { rootCloneBenchmark, tapPoolBenchmark, vmConcurrencyBenchmark, vmCreateBenchmark } from './vm.js';
import { forkBenchmark, snapshotCostBenchmark, warmCreateBenchmark } from './warm.js';
import { execRoundTripBenchmark, firstCommandBenchmark, workspaceBenchmark } from './workflows.js';

export { ROOT } from './home.js';

const statusHome = daemonHome();

/** Every benchmark `npm run bench` knows. Append new ones here; names must be unique. */
export const benchmarks: AnyBenchmark[] = [
  {
    name: 'cli-status',
    description: '`banger daemon status` against a running daemon vs `node -e 0` (CLI start-up + one API round trip)',
    target: 1.3,
    rounds: 20,
    setup: statusHome.setup,
    candidate: async () => {
      await run(process.execPath, [BANGER, 'daemon', 'status'], statusHome.env());
    },
    baseline: async () => {
      await run(process.execPath, ['-e', '0']);
    },
    teardown: statusHome.teardown,
  },
  rootCloneBenchmark(),
  vmCreateBenchmark(),
  tapPoolBenchmark(),
  imagePullBenchmark(),
  daemonMemoryBenchmark(),
  vmConcurrencyBenchmark(),
  firstCommandBenchmark(),
  execRoundTripBenchmark(),
  workspaceBenchmark(),
  vmCpBenchmark('in'),
  vmCpBenchmark('out'),
  sdkImportBenchmark(),
  warmCreateBenchmark(),
  forkBenchmark(),
  snapshotCostBenchmark(),
];
