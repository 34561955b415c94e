/**
 * Named points where a recovery test can kill the daemon (SIGKILL, no cleanup) to prove that the
 * next start reconciles whatever was half done. Inert unless BANGER_CRASH_AT names the point; only
 * the test suite sets it.
 */
export function crashPoint(name: string): void {
  if (process.env.BANGER_CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
}
