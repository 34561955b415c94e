// Preloaded into bangerd by the daemon-memory benchmark only (NODE_OPTIONS="--expose-gc --import
// <this file>"): on SIGUSR2 it runs a full garbage collection and then writes a count and the process's
// memory usage as JSON to $BENCH_GC_DONE, so memory is read without garbage V8 has not collected yet.
// The daemon's code is untouched.
import { renameSync, writeFileSync } from 'node:fs';

const done = process.env.BENCH_GC_DONE;
const gc = (globalThis as { gc?: () => void }).gc;
let count = 0;
if (done && gc) {
  process.on('SIGUSR2', () => {
    gc();
    // Written aside, then renamed: the benchmark polls the file and must never read half of it.
    writeFileSync(`${done}.tmp`, `${JSON.stringify({ count: ++count, ...process.memoryUsage() })}\n`);
    renameSync(`${done}.tmp`, done);
  });
}
