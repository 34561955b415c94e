import type { DaemonStatus } from '../../src/api/schemas.js';

/** A daemon status a FAKE daemon answers with (the CLI status tests compare what both CLI paths print). */
export const FAKE_STATUS: DaemonStatus = {
  pid: 4242,
  version: '9.9.9',
  commit: 'abcdef123456',
  buildTime: '2026-01-01T00:00:00.000Z',
  nodeVersion: 'v0.0.0',
  socketPath: '/fake/bangerd.sock',
  logPath: '/fake/bangerd.log',
  stateDir: '/fake/state',
  startedAt: '2026-01-01T00:00:00.000Z',
  uptimeSeconds: 3725,
  dnsListenAddr: null,
  webListenAddr: '127.0.0.1:1',
  vmm: 'qemu',
  accel: 'tcg',
};
