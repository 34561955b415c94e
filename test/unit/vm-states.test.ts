import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmState } from '../../src/api/schemas.js';
import { canMove, decide, effectiveState, NEXT_STATES, type VmRequest } from '../../src/daemon/services/vm-states.js';

const STATES: VmState[] = ['created', 'starting', 'running', 'paused', 'suspended', 'stopping', 'stopped', 'error'];

test('every state can reach stopped, and from stopped every state but created is reachable again', () => {
  for (const from of STATES) {
    const seen = new Set<VmState>([from]);
    const queue = [from];
    while (queue.length) {
      for (const n of NEXT_STATES[queue.shift() as VmState]) {
        if (seen.has(n)) continue;
        seen.add(n);
        queue.push(n);
      }
    }
    assert.ok(seen.has('stopped'), `${from} can end stopped`);
  }
  assert.equal(canMove('stopped', 'created'), false, 'nothing goes back to created');
  assert.equal(canMove('created', 'running'), false, 'running only through starting');
  assert.equal(canMove('stopped', 'running'), false);
  assert.equal(canMove('starting', 'running'), true);
});

test('the effective state corrects the record with the VMM process', () => {
  assert.equal(effectiveState('running', false), 'stopped', 'a dead VMM is not running');
  assert.equal(effectiveState('stopping', false), 'stopped');
  assert.equal(effectiveState('running', true), 'running');
  assert.equal(effectiveState('stopped', false), 'stopped');
  assert.equal(effectiveState('error', false), 'error');
  assert.equal(effectiveState('paused', false), 'stopped', 'a paused VM whose VMM died is stopped');
  assert.equal(effectiveState('paused', true), 'paused');
  assert.equal(effectiveState('suspended', false), 'suspended', 'a suspended VM has no VMM by design');
});

test('pause and resume: running ⇄ paused, paused → suspended → starting (restore)', () => {
  assert.ok(canMove('running', 'paused'));
  assert.ok(canMove('paused', 'running'));
  assert.ok(canMove('paused', 'suspended'));
  assert.ok(canMove('suspended', 'starting'));
  assert.equal(canMove('suspended', 'running'), false, 'a restore goes through starting');
  assert.equal(canMove('stopped', 'paused'), false);
  const resume = decide('guest', 'paused', 'dev');
  assert.ok(resume.do === 'refuse' && /banger vm resume dev/.test(resume.fix));
});

test('the request table: every request has a verdict in every state', () => {
  const table: Record<VmRequest, string> = {
    // created starting running paused suspended stopping stopped error
    start: 'run run noop run run run run run',
    stop: 'run run run run run run run run',
    kill: 'run run run run run run run run',
    restart: 'run run run run run run run run',
    delete: 'run run run run run run run run',
    nat: 'run run run run run run run run',
    resize: 'run refuse refuse refuse refuse refuse run run',
    guest: 'refuse refuse run refuse refuse refuse refuse refuse',
    prune: 'run noop noop noop noop noop run run',
    pause: 'refuse refuse run run noop refuse refuse refuse',
    resume: 'refuse refuse noop run run refuse refuse refuse',
    snapshot: 'refuse refuse run run refuse refuse run refuse',
    fork: 'refuse refuse run run refuse refuse refuse refuse',
  };
  for (const [request, row] of Object.entries(table) as Array<[VmRequest, string]>) {
    const got = STATES.map((s) => decide(request, s, 'dev').do).join(' ');
    assert.equal(got, row, request);
  }
  const refused = decide('resize', 'running', 'dev');
  assert.ok(refused.do === 'refuse' && /stop it first: banger vm stop dev/.test(refused.fix));
});
