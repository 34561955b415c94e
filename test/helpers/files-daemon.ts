/**
 * The files API served for real (Router + fileRoutes + FilesService) on a private socket, in
 * front of a GuestChannel the test chooses (usually the FAKE HostFakeGuest: "the guest" is this
 * host), and a BangerClient pointed at it. No bangerd, no VM.
 */
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import pino from 'pino';
import { notFound } from '../../src/api/errors.js';
import { BangerClient } from '../../src/client/client.js';
import { resolveLayout } from '../../src/config/layout.js';
import { Router } from '../../src/daemon/http.js';
import { fileRoutes } from '../../src/daemon/routes-files.js';
import { FilesService } from '../../src/daemon/services/files.js';
import type { GuestChannel } from '../../src/guest/guest-channel.js';

export interface FilesDaemon {
  dir: string;
  client: BangerClient;
  /** VM name → its channel; a ref not in it answers not_found. */
  guests: Map<string, GuestChannel>;
  close(): Promise<void>;
}

export async function startFilesDaemon(guests: Record<string, GuestChannel>): Promise<FilesDaemon> {
  const dir = await mkdtemp('/tmp/bg-files-');
  const layout = resolveLayout({ BANGER_HOME: join(dir, 'home') });
  await mkdir(layout.runtimeDir, { recursive: true });
  await chmod(layout.runtimeDir, 0o700);
  const map = new Map(Object.entries(guests));
  const files = new FilesService({
    guest: async (ref) => {
      const g = map.get(ref);
      if (!g) throw notFound('vm', ref);
      return g;
    },
  });
  const router = new Router(pino({ level: 'silent' }));
  router.add({ method: 'GET', path: '/v1/daemon', handler: () => ({ ok: true }) }, ...fileRoutes(files));
  const server: Server = createServer((req, res) => void router.handle(req, res));
  await new Promise<void>((r) => server.listen(layout.socketPath, r));
  return {
    dir,
    client: new BangerClient({ layout, autostart: false }),
    guests: map,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
