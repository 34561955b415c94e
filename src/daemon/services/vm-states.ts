import type { VmState } from '../../api/schemas.js';

/**
 * The VM state machine in one place: which state may follow which, and what each request does in
 * each state. VmService asks here instead of checking states itself.
 *
 *   created ──► starting ──► running ──► stopping ──► stopped ──► starting …
 *      │            │            │                       ▲
 *      └────────────┴────────────┴──► error ─────────────┘
 */
export const NEXT_STATES: Readonly<Record<VmState, readonly VmState[]>> = {
  // --no-start ends a create in `stopped`; a start that launched goes to `starting`.
  created: ['starting', 'stopped'],
  starting: ['running', 'stopping', 'stopped', 'error'],
  running: ['stopping', 'stopped', 'error'],
  // `running` again: a daemon restart re-adopts a VMM that outlived a stop cut short.
  stopping: ['stopped', 'error', 'running'],
  // `error` after `stopped`: a guest that never became ready is stopped, then marked.
  stopped: ['starting', 'stopping', 'stopped', 'error'],
  error: ['starting', 'stopping', 'stopped', 'error'],
};

export function canMove(from: VmState, to: VmState): boolean {
  return NEXT_STATES[from].includes(to);
}

/** What a caller asks of a VM. `resize` is `vm set` of vcpus/memory/disk; `guest` an agent call. */
export type VmRequest = 'start' | 'stop' | 'kill' | 'restart' | 'delete' | 'resize' | 'nat' | 'guest' | 'prune';

/** run: do it; noop: already so; refuse: not in this state (with a reason and a fix). */
export type Verdict = { do: 'run' } | { do: 'noop' } | { do: 'refuse'; why: string; fix: string };

/**
 * The state that counts for a request: the recorded one, corrected by whether the VMM process is
 * alive (a row that says `running` over a dead process is `stopped`; a live process is running).
 */
export function effectiveState(recorded: VmState, alive: boolean): VmState {
  const live = recorded === 'starting' || recorded === 'running' || recorded === 'stopping';
  if (alive) return live ? recorded : 'running';
  return live ? 'stopped' : recorded;
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
      return s === 'running' ? RUN : { do: 'refuse', why: `VM ${name} is ${s}`, fix: `start it: banger vm start ${name}` };
    case 'prune':
      return s === 'created' || s === 'stopped' || s === 'error' ? RUN : NOOP;
  }
}
