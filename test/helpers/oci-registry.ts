import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** The distribution v2 registry from Debian's `docker-registry` package (a declared test dependency). */
export const REGISTRY_BIN = process.env.BANGER_DOCKER_REGISTRY ?? '/usr/bin/docker-registry';

export interface LocalRegistry {
  /** `127.0.0.1:PORT`, the registry part of an image reference. */
  host: string;
  /** `http://127.0.0.1:PORT`. */
  url: string;
  /** The registry's temp dir (config.yml, registry.log, storage/). */
  dir: string;
  /** Kills the registry and removes its temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

/** A free loopback TCP port (bound then released: a tiny race, retried by startRegistry). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function killChild(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  const done = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timeout = sleep(3000).then(() => 'timeout' as const);
  if ((await Promise.race([done, timeout])) === 'timeout') {
    child.kill('SIGKILL');
    await done;
  }
}

/**
 * Starts a private docker-registry on 127.0.0.1 (no auth, no TLS, filesystem storage in a temp
 * dir, deletes enabled) and waits until `GET /v2/` answers 200.
 */
export async function startRegistry(): Promise<LocalRegistry> {
  if (!existsSync(REGISTRY_BIN)) {
    throw new Error(
      `${REGISTRY_BIN} not found: the OCI tests need the distribution registry (apt-get install docker-registry, or bash scripts/install-deps.sh --test)`,
    );
  }
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = await mkdtemp('/tmp/bg-reg-');
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    const config = [
      'version: 0.1',
      'log:',
      '  level: info',
      '  accesslog:',
      '    disabled: false',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'storage')}`,
      '  delete:',
      '    enabled: true',
      '  maintenance:',
      '    uploadpurging:',
      '      enabled: false',
      'http:',
      `  addr: ${host}`,
      '  headers:',
      '    X-Content-Type-Options: [nosniff]',
      '',
    ].join('\n');
    const configPath = join(dir, 'config.yml');
    await writeFile(configPath, config);
    const logPath = join(dir, 'registry.log');
    const logFd = openSync(logPath, 'a');
    // No OTEL/other env surprises: the registry reads REGISTRY_* env vars as config overrides.
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('REGISTRY_')) env[k] = v;
    const child = spawn(REGISTRY_BIN, ['serve', configPath], { stdio: ['ignore', logFd, logFd], env });
    closeSync(logFd);
    child.on('error', () => {});
    const url = `http://${host}`;
    const deadline = Date.now() + 15_000;
    let ready = false;
    while (Date.now() < deadline && !exited(child)) {
      try {
        const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.status === 200) {
          ready = true;
          break;
        }
      } catch {
        /* not listening yet */
      }
      await sleep(50);
    }
    if (ready) {
      let stopped = false;
      return {
        host,
        url,
        dir,
        async stop() {
          if (stopped) return;
          stopped = true;
          await killChild(child);
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    await killChild(child);
    lastError = await readFile(logPath, 'utf8').catch(() => '');
    await rm(dir, { recursive: true, force: true });
  }
  throw new Error(`docker-registry did not become ready on 127.0.0.1 (3 attempts); last log:\n${lastError}`);
}
