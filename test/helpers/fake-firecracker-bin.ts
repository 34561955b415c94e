import { appendFileSync, constants, existsSync, lstatSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
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
 *   FAKE_FC_CHROOT=dir        set by the FAKE jailer (fake-jailer-bin.ts): every path Firecracker
 *                             is given is inside this directory, as in the jailer's chroot; the
 *                             kernel, initrd and drives must then exist there as regular files
 */
function parseArgs(argv: string[]): { apiSock: string; id: string } {
  let apiSock: string | undefined;
  let id = 'anonymous-instance';
  for (let i = 0; i < argv.length; i++) {
    // Both `--flag value` and `--flag=value` (the jailer execs Firecracker with the latter).
    const eq = (argv[i] as string).indexOf('=');
    const [flag, value] = eq > 0 ? [(argv[i] as string).slice(0, eq), (argv[i] as string).slice(eq + 1)] : [argv[i], argv[++i]];
    if (value === undefined) fail(`argument ${flag} needs a value`);
    else if (flag === '--api-sock') apiSock = value;
    else if (flag === '--id') id = value;
    else if (flag === '--start-time-us' || flag === '--start-time-cpu-us') {
      if (!/^\d+$/.test(value)) fail(`Invalid value for ${flag}: ${value}`);
    }
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

const parsedArgs = parseArgs(process.argv.slice(2));
const { id } = parsedArgs;
/** A path as this (maybe jailed) Firecracker resolves it. */
const chroot = process.env.FAKE_FC_CHROOT;
const inJail = (p: string) => (chroot ? join(chroot, p) : p);
const apiSock = inJail(parsedArgs.apiSock);
/** Under the fake jail, a file Firecracker opens must be a regular file inside the chroot. */
const openable = (what: string, p: string | undefined): string | undefined => {
  if (!chroot || p === undefined) return undefined;
  if (!p.startsWith('/')) return `${what} ${p}: not an absolute path inside the jail`;
  try {
    if (!lstatSync(inJail(p)).isFile()) return `${what} ${p}: not a regular file inside the jail`;
  } catch {
    return `${what} ${p}: No such file or directory (os error 2) inside the jail ${chroot}`;
  }
  return undefined;
};
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
        logFd = openSync(inJail(logPath), constants.O_CREAT | constants.O_RDWR | constants.O_NONBLOCK, 0o600);
      } catch (e) {
        return `Failed to open the log file: ${(e as Error).message}`;
      }
      writeSync(logFd, `Running Firecracker v${api.validator.spec.info.version} (fake)\n`);
      return undefined;
    },
    onVsock(udsPath) {
      if (existsSync(inJail(udsPath))) return `Failed to bind ${udsPath}: Address in use`;
      createServer((s) => s.destroy()).listen(inJail(udsPath));
      return undefined;
    },
    onBootSource(kernelPath, initrdPath) {
      return openable('kernel', kernelPath) ?? openable('initrd', initrdPath);
    },
    onDrive(pathOnHost) {
      return openable('drive', pathOnHost);
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
