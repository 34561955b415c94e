import type { VmState } from '../../api/schemas.js';

/**
 * The VM state machine in one place: which state may follow which, and what each request does in
 * each state. VmService asks here instead of checking states itself.
 *
 *   created ──► starting ──► running ──► stopping ──► stopped ──► starting …
 *      │            │          │   ▲                     ▲
 *      │            │          ▼   │ (resume)            │
 *      │            │          paused ──► suspended ─────┤ (vm stop discards the saved state)
 *      │            │                        └─► starting (resume restores it)
 *      └────────────┴────────────┴──► error ─────────────┘
 */
export const NEXT_STATES: Readonly<Record<VmState, readonly VmState[]>> = {
  // --no-start ends a create in `stopped`; a start that launched goes to `starting`.
  created: ['starting', 'stopped'],
  // `suspended` from starting/running: a resume from disk cut short by the daemon's death is undone
  // at the next start (its saved state is still there).
  starting: ['running', 'stopping', 'stopped', 'error', 'suspended'],
  running: ['paused', 'stopping', 'stopped', 'error', 'suspended'],
  // `vm pause`: the VMM lives with its vCPUs stopped; `--to-disk` goes on to `suspended`.
  paused: ['running', 'suspended', 'stopping', 'stopped', 'error'],
  // State and RAM saved on disk, no VMM: a resume restores it (through `starting`).
  suspended: ['starting', 'stopping', 'stopped', 'error'],
  // `running` again: a daemon restart re-adopts a VMM that outlived a stop cut short.
  stopping: ['stopped', 'error', 'running'],
  // `error` after `stopped`: a guest that never became ready is stopped, then marked.
  stopped: ['starting', 'stopping', 'stopped', 'error'],
  // `suspended` again: a resume from disk that failed puts the saved state back.
  error: ['starting', 'stopping', 'stopped', 'error', 'suspended'],
};

export function canMove(from: VmState, to: VmState): boolean {
  return NEXT_STATES[from].includes(to);
}

/** What a caller asks of a VM. `resize` is `vm set` of vcpus/memory/disk; `guest` an agent call. */
export type VmRequest = 'start' | 'stop' | 'kill' | 'restart' | 'delete' | 'resize' | 'nat' | 'guest' | 'prune' | 'pause' | 'resume' | 'snapshot' | 'fork';

/** run: do it; noop: already so; refuse: not in this state (with a reason and a fix). */
export type Verdict = { do: 'run' } | { do: 'noop' } | { do: 'refuse'; why: string; fix: string };

/**
 * The state that counts for a request: the recorded one, corrected by whether the VMM process is
 * alive (a row that says `running` over a dead process is `stopped`; a live process is running).
 */
export function effectiveState(recorded: VmState, alive: boolean): VmState {
  const live = isLiveState(recorded);
  if (alive) return live ? recorded : 'running';
  return live ? 'stopped' : recorded;
}

/** States in which a VMM process is expected to exist. */
export function isLiveState(s: VmState): boolean {
  return s === 'starting' || s === 'running' || s === 'paused' || s === 'stopping';
}

const RUN: Verdict = { do: 'run' };
const NOOP: Verdict = { do: 'noop' };
const whenDown = (s: VmState, name: string, what: string): Verdict =>
  s === 'created' || s === 'stopped' || s === 'error'
    ? RUN
    : { do: 'refuse', why: `VM ${name} is ${s}; ${what} changes stopped VMs only`, fix: `stop it first: banger vm stop ${name}` };

/** What `request` does to a VM whose effective state is `s` (see effectiveState). */
export function decide(request: VmRequest, s: VmState, name: string): Verdict {
  switch (request) {
    case 'start':
      // A paused or suspended VM is resumed by a start.
      return s === 'running' ? NOOP : RUN;
    case 'stop':
    case 'kill':
    case 'restart':
    case 'delete':
      return RUN;
    case 'nat':
      // Host-side policy: it changes live, without touching the guest.
      return RUN;
    case 'resize':
      return whenDown(s, name, 'vm set');
    case 'guest':
      if (s === 'paused' || s === 'suspended') return { do: 'refuse', why: `VM ${name} is ${s}`, fix: `resume it: banger vm resume ${name}` };
      return s === 'running' ? RUN : { do: 'refuse', why: `VM ${name} is ${s}`, fix: `start it: banger vm start ${name}` };
    case 'prune':
      return s === 'created' || s === 'stopped' || s === 'error' ? RUN : NOOP;
    case 'pause':
      // paused → paused runs too: `--to-disk` of a resident pause goes on to disk.
      if (s === 'running' || s === 'paused') return RUN;
      if (s === 'suspended') return NOOP;
      return { do: 'refuse', why: `VM ${name} is ${s}; only a running VM can be paused`, fix: `start it: banger vm start ${name}` };
    case 'resume':
      if (s === 'paused' || s === 'suspended') return RUN;
      if (s === 'running') return NOOP;
      return { do: 'refuse', why: `VM ${name} is ${s}, not paused`, fix: `start it: banger vm start ${name}` };
    case 'snapshot':
      // A stopped VM's disks are consistent as they are (a disk-only snapshot).
      if (s === 'running' || s === 'paused' || s === 'stopped') return RUN;
      return {
        do: 'refuse',
        why: `VM ${name} is ${s}; a snapshot needs a running, paused or stopped VM`,
        fix: `start or stop it first: banger vm start ${name}`,
      };
    case 'fork':
      if (s === 'running' || s === 'paused') return RUN;
      return { do: 'refuse', why: `VM ${name} is ${s}; fork clones a running VM`, fix: `start it: banger vm start ${name}` };
  }
}
