import { appendFileSync, constants, existsSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { FakeFirecrackerApi, serveFakeFirecracker } from './fake-firecracker.js';
import { firecrackerSpecAvailable, lenientFirecrackerSpec, SpecValidator } from './fake-firecracker-spec.js';

/**
 * A FAKE `firecracker` executable (run with node) for the driver's integration tests: it takes
 * the same arguments as the real one, serves the FAKE API on --api-sock, and exits when it gets
 * SendCtrlAltDel, as a guest with `reboot=k` powers Firecracker off. Test knobs (environment):
 *   FAKE_FC_RECORD=file       append each request to it as a JSON line
 *   FAKE_FC_FAIL="PUT /vsock" answer that request with a fault
 *   FAKE_FC_IGNORE_CTRL_ALT_DEL=1  keep running after SendCtrlAltDel (a guest that ignores it)
 *   FAKE_FC_PIDFILE=file      write the pid there
 */
function parseArgs(argv: string[]): { apiSock: string; id: string } {
  let apiSock: string | undefined;
  let id = 'anonymous-instance';
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) fail(`argument ${flag} needs a value`);
    else if (flag === '--api-sock') apiSock = value;
    else if (flag === '--id') id = value;
    // Firecracker refuses unknown arguments, so the fake does too.
    else fail(`Found argument '${flag}' which wasn't expected`);
  }
  if (!apiSock) fail('--api-sock is required by the fake');
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) fail(`Invalid instance ID: ${id}`);
  return { apiSock: apiSock as string, id };
}

function fail(message: string): never {
  process.stderr.write(`fake-firecracker: ${message}\n`);
  process.exit(1);
}

const { apiSock, id } = parseArgs(process.argv.slice(2));
const record = process.env.FAKE_FC_RECORD;
if (process.env.FAKE_FC_PIDFILE) writeFileSync(process.env.FAKE_FC_PIDFILE, String(process.pid));
let logFd: number | undefined;

// Without the official spec (a clone without ../shared) the fake is LENIENT: it routes banger's
// paths and validates nothing. Only tests that do not test the API itself run it that way.
const validator = firecrackerSpecAvailable() ? undefined : new SpecValidator(lenientFirecrackerSpec());
const api = new FakeFirecrackerApi({
  instanceId: id,
  ...(validator ? { validator } : {}),
  ...(process.env.FAKE_FC_FAIL ? { failOn: process.env.FAKE_FC_FAIL } : {}),
  hooks: {
    onLogger(logPath) {
      try {
        // Firecracker's own flags: no O_APPEND, no O_TRUNC.
        logFd = openSync(logPath, constants.O_CREAT | constants.O_RDWR | constants.O_NONBLOCK, 0o600);
      } catch (e) {
        return `Failed to open the log file: ${(e as Error).message}`;
      }
      writeSync(logFd, `Running Firecracker v${api.validator.spec.info.version} (fake)\n`);
      return undefined;
    },
    onVsock(udsPath) {
      if (existsSync(udsPath)) return `Failed to bind ${udsPath}: Address in use`;
      createServer((s) => s.destroy()).listen(udsPath);
      return undefined;
    },
    onInstanceStart() {
      process.stdout.write('fake guest console: Linux version 6.1 (fake)\n');
    },
    onCtrlAltDel() {
      // After the 204 went out, like a guest that reboots and takes Firecracker down.
      if (!process.env.FAKE_FC_IGNORE_CTRL_ALT_DEL) setTimeout(() => process.exit(0), 20);
    },
    onRequest(r) {
      if (record) appendFileSync(record, `${JSON.stringify(r)}\n`);
      if (logFd !== undefined) writeSync(logFd, `[fake] ${r.method} ${r.path} -> ${r.status}\n`);
    },
  },
});

try {
  await serveFakeFirecracker(api, apiSock);
} catch (e) {
  fail(`Failed to open the API socket ${apiSock}: ${(e as Error).message}`);
}
