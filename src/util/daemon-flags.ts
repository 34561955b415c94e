/**
 * Node flags bangerd runs with (the CLI's autostart, the systemd unit and the split-start supervisor all pass them).
 * `--max-semi-space-size=2` (MiB): V8's young generation otherwise grows its semi-spaces up to
 * 16 MiB each under the allocation bursts of operations and keeps them committed; for a daemon
 * that is idle most of the time that was ~20 MiB of RSS (idle 71 instead of 79 MiB, and ~85
 * instead of ~120 MiB after operations: docs/performance.md), at no measurable cost per operation.
 */
export const BANGERD_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2'];
