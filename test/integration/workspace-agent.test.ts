/**
 * Workspaces through the REAL guest channel: the real agent binary runs on this host behind fake
 * virtio-serial ports (test/helpers/serial-relay.ts), the product's AgentGuestChannel and
 * ProcessService drive it, and WorkspaceService ships a repository through them (writeFile of a
 * bundle, tarIn of the working tree, exec of git, move) and reads the guest's work back (readFile
 * of a patch and of a bundle). "The guest" filesystem is this host's; paths are temp dirs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { BangerError } from '../../src/api/errors.js';
import { ProcessService } from '../../src/daemon/services/processes.js';
import { WorkspaceService } from '../../src/daemon/services/workspaces.js';
import { type AgentLink, openAgentLink } from '../../src/guest/agent-link.js';
import { ProcessRunner } from '../../src/host/runner.js';
import type { Repos } from '../../src/store/repos.js';
import { KeyedMutex } from '../../src/util/keyed-mutex.js';
import type { VmmHandle } from '../../src/vmm/driver.js';
import { requires } from '../helpers/prereq.js';
import { RelayedAgent } from '../helpers/serial-relay.js';
import { ctx, git, makeHostRepo, snapshot, storeWithVms, worktreeTree } from '../helpers/workspace-fixture.js';

const skip = requires(spawnSync('git', ['--version']).status === 0, 'git on the host');

describe('workspaces over the real agent channel', { skip }, () => {
  let tmp: string;
  let host: string;
  let agent: RelayedAgent;
  let link: AgentLink;
  let repos: Repos;
  let svc: WorkspaceService;

  before(async () => {
    tmp = await mkdtemp('/tmp/bg-ws-agent-');
    process.env.GIT_CONFIG_GLOBAL = '/dev/null';
    process.env.GIT_CONFIG_NOSYSTEM = '1';
    ({ host } = makeHostRepo(tmp));
    repos = storeWithVms(tmp, [['v1', 'dev', 'running']]);
    agent = await RelayedAgent.start();
    link = openAgentLink({ agentSocket: agent.agentSocket, agentTransport: 'virtio-serial' } as VmmHandle);
    await link.waitReady(20_000);
    const procs = new ProcessService({ vmGuest: async () => ({ vm: { id: 'v1', name: 'dev' }, channel: link.guest }), log: pino({ level: 'silent' }) });
    svc = new WorkspaceService({
      repos,
      runner: new ProcessRunner(),
      clock: { now: () => new Date() },
      locks: new KeyedMutex(),
      vmRow: (ref) => {
        const r = repos.vms.byName(ref);
        if (!r) throw new BangerError('not_found', `no VM ${ref}`);
        return r;
      },
      guest: (ref) => procs.guest(ref),
      exec: (ref, spec, opts) => procs.exec(ref, spec, opts),
      stagingDir: join(tmp, 'daemon-staging'),
    });
  });
  after(async () => {
    link?.close();
    await agent?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('prepare full, work in the guest, export patch and branch: the trees match, the guest index is untouched, no process is left', async () => {
    const g = join(tmp, 'guest', 'root', 'repo');
    const res = await svc.prepare('dev', { hostPath: host, guestPath: g, includeUntracked: true }, ctx());
    assert.equal(git(g, 'rev-parse', 'HEAD'), git(host, 'rev-parse', 'HEAD'));
    assert.equal(git(g, 'write-tree'), git(host, 'write-tree'));
    assert.deepEqual(
      snapshot(g),
      snapshot(host).filter((l) => !l.includes('ignored.log')),
    );
    assert.equal(git(g, 'rev-parse', 'HEAD:sub'), git(join(g, 'sub'), 'rev-parse', 'HEAD'));
    assert.equal(res.untrackedSkipped, 0);
    // Every guest step's process was forgotten: the guest's process table is empty again.
    assert.deepEqual(await link.guest.listProcesses(), []);

    writeFileSync(join(g, 'agent-work.txt'), 'done through the agent\n');
    git(g, 'rm', '-q', 'run.sh');
    const guestTree = worktreeTree(g, tmp);
    const index = readFileSync(join(g, '.git', 'index'));
    const before = snapshot(g);

    const text = await svc.exportText('dev', 'patch');
    const parts: Buffer[] = [];
    for await (const b of text.stream) parts.push(b as Buffer);
    await text.done;
    const fresh = join(tmp, 'fresh');
    git(tmp, 'clone', '-q', '--no-local', host, fresh);
    git(fresh, 'checkout', '-q', '--detach', res.workspace.baseCommit);
    writeFileSync(join(tmp, 'w.patch'), Buffer.concat(parts));
    git(fresh, 'apply', '--binary', '--index', join(tmp, 'w.patch'));
    assert.equal(git(fresh, 'write-tree'), guestTree);

    const b = await svc.exportBranch('dev', 'wip');
    assert.equal(git(host, 'rev-parse', `${b.ref}^{tree}`), guestTree);
    assert.deepEqual(readFileSync(join(g, '.git', 'index')), index);
    assert.deepEqual(snapshot(g), before);
    assert.deepEqual(
      readdirSync(join(g, '.git')).filter((n) => n.startsWith('banger')),
      [],
    );
    assert.deepEqual(await link.guest.listProcesses(), []);
  });
});
