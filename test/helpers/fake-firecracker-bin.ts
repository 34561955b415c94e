import {
  appendFileSync,
  closeSync,
  constants,
  existsSync,
  ftruncateSync,
  lstatSync,
  openSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { FakeFirecrackerApi, type FakeSnapshot, serveFakeFirecracker } from './fake-firecracker.js';
import { firecrackerSpecAvailable, lenientFirecrackerSpec, SpecValidator } from './fake-firecracker-spec.js';

/**
 * A FAKE `firecracker` executable (run with node) for the driver's integration tests: it takes
 * the same arguments as the real one, serves the FAKE API on --api-sock, and exits when it gets
 * SendCtrlAltDel, as a guest with `reboot=k` powers Firecracker off. Test knobs (environment):
 *   FAKE_FC_RECORD=file       append each request to it as a JSON line
 *   FAKE_FC_FAIL="PUT /vsock" answer that request with a fault
 *   FAKE_FC_IGNORE_CTRL_ALT_DEL=1  keep running after SendCtrlAltDel (a guest that ignores it)
 *   FAKE_FC_PIDFILE=file      write the pid there
 *   FAKE_FC_SNAPSHOT_PARTIAL=1  PUT /snapshot/create writes half a state file, then fails (as on a full disk)
 *   FAKE_FC_TOUCH_DISKS=1     each time the vCPUs resume (PATCH /vm Resumed, a load with resume_vm),
 *                             append "written by <id>" to every drive file, as a guest writing its
 *                             disks (shows which files a clone writes)
 * Snapshots: PUT /snapshot/create writes the device configuration as JSON to snapshot_path and a
 * sparse file of mem_size_mib MiB (a marker at offset 0) to mem_file_path, opening both the way
 * Firecracker does (create + truncate, following links); PUT /snapshot/load reads them back and
 * requires the memory file's size to match, and every saved drive file to exist.
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
    onSnapshotCreate(statePath, memoryPath, snapshot) {
      const flags = constants.O_CREAT | constants.O_WRONLY | constants.O_TRUNC;
      try {
        const state = Buffer.from(JSON.stringify({ fakeFirecrackerSnapshot: 1, ...snapshot }));
        const fd = openSync(inJail(statePath), flags, 0o600);
        try {
          if (process.env.FAKE_FC_SNAPSHOT_PARTIAL) {
            writeSync(fd, state.subarray(0, state.length >> 1));
            return 'Cannot save the microVM state: No space left on device (os error 28)';
          }
          writeSync(fd, state);
        } finally {
          closeSync(fd);
        }
        const mem = openSync(inJail(memoryPath), flags, 0o600);
        try {
          writeSync(mem, `fake guest memory of ${id}\n`);
          ftruncateSync(mem, Number(snapshot.machine?.mem_size_mib ?? 128) * 1024 * 1024);
        } finally {
          closeSync(mem);
        }
      } catch (e) {
        return `Cannot save the microVM state: ${(e as Error).message}`;
      }
      return undefined;
    },
    onSnapshotLoad(statePath, memoryPath) {
      const unopenable = openable('snapshot', statePath) ?? openable('memory file', memoryPath);
      if (unopenable) return unopenable;
      let snapshot: FakeSnapshot & { fakeFirecrackerSnapshot?: number };
      let memBytes: number;
      try {
        snapshot = JSON.parse(readFileSync(inJail(statePath), 'utf8')) as FakeSnapshot & { fakeFirecrackerSnapshot?: number };
        memBytes = statSync(inJail(memoryPath)).size;
      } catch (e) {
        return `Cannot load the microVM state: ${(e as Error).message}`;
      }
      if (snapshot.fakeFirecrackerSnapshot !== 1) return `Cannot load the microVM state: ${statePath} is not a snapshot`;
      const want = Number(snapshot.machine?.mem_size_mib ?? 128) * 1024 * 1024;
      if (memBytes !== want) return `Cannot load the guest memory: ${memoryPath} has ${memBytes} bytes, the snapshot ${want}`;
      for (const d of snapshot.drives) {
        // A real load opens each saved drive file; it must exist (inside the jail when jailed).
        if (!existsSync(inJail(String(d.path_on_host)))) return `drive ${String(d.path_on_host)}: No such file or directory (os error 2)`;
      }
      return { machine: snapshot.machine, drives: snapshot.drives, nets: snapshot.nets, vsock: snapshot.vsock } as FakeSnapshot;
    },
    onResume(drives) {
      if (!process.env.FAKE_FC_TOUCH_DISKS) return;
      for (const d of drives) appendFileSync(inJail(String(d.path_on_host)), `written by ${id}\n`);
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
