import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import pino from 'pino';
import { BangerError } from '../../src/api/errors.js';
import { parseConfig } from '../../src/config/config.js';
import { type DnsRecords, NetworkService } from '../../src/daemon/services/network.js';
import type { NetPolicy } from '../../src/host/netplan.js';
import type { LeaseRepo } from '../../src/store/leases.js';
import type { Repos } from '../../src/store/repos.js';
import { RecordingOps } from '../helpers/fake-host-net-ops.js';

/*
 * The guest DNS redirect (bridge_ip:53 → bridge_dns_port) is only ever part of the bridge policy
 * while the daemon's own listener holds that port: bound before the policy, left out when the bind
 * failed or the host refused it, removed at shutdown.
 */

/** A named fake: RecordingOps that also records when the DNS listener binds, and refuses DNS policies when told to. */
class OrderingOps extends RecordingOps {
  refuseDns = false;
  override async applyPolicy(spec: NetPolicy) {
    await super.applyPolicy(spec);
    if (spec.dns && this.refuseDns) throw new BangerError('conflict', 'fake: port held by uid 4242');
  }
}

function service(bound: boolean) {
  // A bridge name of its own per test: the claim is a process-wide abstract socket.
  const bridge = `banger${randomBytes(3).toString('hex')}`;
  const config = parseConfig(`bridge_name = "${bridge}"\ncidr = "10.77.0.0/24"\nbridge_ip = "10.77.0.1"\nbridge_dns_port = 42053\n`, 'test-config.toml');
  const ops = new OrderingOps();
  const errors: string[] = [];
  const log = pino({ level: 'error' }, { write: (line: string) => errors.push(JSON.parse(line).msg as string) });
  const fakeDns: DnsRecords = { set: () => {}, remove: () => {}, replaceAll: () => {} };
  const fakeLeases = {
    pins: () => [{ vmId: 'v1', tap: `bg${bridge.slice('banger'.length)}.0`, mac: '52:54:00:4d:00:02', ip: '10.77.0.2', nat: false }],
  } as unknown as LeaseRepo;
  const fakeRepos = { vms: { all: () => [] } } as unknown as Repos;
  const net = new NetworkService({
    ops,
    leases: fakeLeases,
    repos: fakeRepos,
    config,
    clock: { now: () => new Date(0) },
    log,
    dns: fakeDns,
    onHostReady: async () => {
      ops.calls.push(['bindDnsListener']);
      return bound;
    },
  });
  const steps = () =>
    ops.calls.map((c) => (c[0] === 'applyPolicy' ? `applyPolicy${(c[1] as NetPolicy).dns ? '+dns' : ''}` : (c[0] as string))).filter((s) => s !== 'pinning');
  return { net, ops, errors, steps, release: async () => (await net.claim()).release() };
}

test('ensureHost: bridge, then the DNS listener, then the policy with the redirect to it; close removes the redirect only', async () => {
  const s = service(true);
  await s.net.ensureHost();
  assert.deepEqual(s.steps(), ['ensureBridge', 'bindDnsListener', 'applyPolicy+dns', 'routeVmDomain']);
  const first = s.ops.calls.find((c) => c[0] === 'applyPolicy')?.[1] as NetPolicy;
  assert.deepEqual(first.dns, { ip: '10.77.0.1', port: 42053 });
  // Every later policy (a VM starting, stopping, NAT changes) carries the same redirect.
  await s.net.applyNat();
  assert.equal(s.steps().at(-1), 'applyPolicy+dns');

  await s.net.close();
  assert.deepEqual(s.steps().slice(-2), ['applyPolicy', 'unrouteVmDomain'], 'at shutdown the policy is re-applied without the redirect');
  const last = s.ops.calls.filter((c) => c[0] === 'applyPolicy').at(-1)?.[1] as NetPolicy;
  assert.equal(last.dns, undefined);
  assert.equal(last.pins.length, 1, 'the VMs keep their pins');
  assert.ok(!s.ops.calls.some((c) => c[0] === 'removePolicy' || c[0] === 'deleteBridge'), 'the bridge and its policy stay for the running VMs');
  await s.release();
});

test('ensureHost: when the DNS listener could not bind, the policy has no redirect and the failure is logged as an error', async () => {
  const s = service(false);
  await s.net.ensureHost();
  assert.deepEqual(s.steps(), ['ensureBridge', 'bindDnsListener', 'applyPolicy', 'routeVmDomain']);
  await s.net.applyNat();
  assert.ok(!s.ops.calls.some((c) => c[0] === 'applyPolicy' && (c[1] as NetPolicy).dns), 'no policy ever redirects port 53');
  assert.ok(
    s.errors.some((m) => /guest DNS listener not bound on 10\.77\.0\.1:42053/.test(m)),
    s.errors.join('\n'),
  );
  await s.net.close();
  assert.ok(!s.ops.calls.some((c) => c[0] === 'applyPolicy' && (c[1] as NetPolicy).dns));
  await s.release();
});

test('a refused redirect (the port held by another user): the policy goes on without it, and stays without it', async () => {
  const s = service(true);
  s.ops.refuseDns = true;
  await s.net.ensureHost();
  assert.deepEqual(s.steps(), ['ensureBridge', 'bindDnsListener', 'applyPolicy+dns', 'applyPolicy', 'routeVmDomain']);
  assert.ok(
    s.errors.some((m) => /DNS redirect of the bridge was refused/.test(m)),
    s.errors.join('\n'),
  );
  s.ops.refuseDns = false;
  await s.net.applyNat();
  assert.equal(s.steps().at(-1), 'applyPolicy', 'not retried: the daemon no longer knows it holds the port');
  await s.release();
});

test('ensureHost retried after a failure binds the DNS listener once', async () => {
  const s = service(true);
  let fail = true;
  s.ops.applyPolicy = async (spec: NetPolicy) => {
    s.ops.calls.push(['applyPolicy', spec]);
    if (fail) throw new BangerError('host_command_failed', 'fake: nft failed');
  };
  await assert.rejects(s.net.ensureHost(), /nft failed/);
  fail = false;
  await s.net.ensureHost();
  assert.equal(s.steps().filter((x) => x === 'bindDnsListener').length, 1);
  assert.equal(s.steps().at(-2), 'applyPolicy+dns');
  await s.release();
});
