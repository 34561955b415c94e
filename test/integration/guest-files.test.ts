/**
 * Files, `vm cp` and file sync against the REAL agent binary on this host (no VM): the agent
 * behind fake virtio-serial ports (test/helpers/serial-relay.ts), the product's channel
 * (openAgentLink → AgentGuestChannel), the daemon's files routes and the product's client over a
 * real socket. "Guest" paths are paths of this host (the agent runs here), under a temp dir.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { BangerError } from '../../src/api/errors.js';
import { copyGuestToHost, copyHostToGuest } from '../../src/cli/cp-host.js';
import { FileSyncService } from '../../src/daemon/services/file-sync.js';
import { type AgentLink, openAgentLink } from '../../src/guest/agent-link.js';
import type { VmmHandle } from '../../src/vmm/driver.js';
import { FakeRunner } from '../helpers/fake-runner.js';
import { type FilesDaemon, startFilesDaemon } from '../helpers/files-daemon.js';
import { RelayedAgent } from '../helpers/serial-relay.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** path → "type mode [content sha | link target]" for every entry under root (lstat, nothing followed). */
async function manifest(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string) => {
    for (const name of (await readdir(dir)).sort()) {
      const p = join(dir, name);
      const st = await lstat(p);
      const mode = (st.mode & 0o7777).toString(8);
      const rel = relative(root, p);
      if (st.isDirectory()) {
        out[rel] = `dir ${mode}`;
        await walk(p);
      } else if (st.isSymbolicLink()) out[rel] = `link -> ${await readlink(p)}`;
      else out[rel] = `file ${mode} ${sha(await readFile(p))}`;
    }
  };
  await walk(root);
  return out;
}

describe('files over the real agent', () => {
  let agent: RelayedAgent;
  let link: AgentLink;
  let d: FilesDaemon;
  let g: string;
  let h: string;

  before(async () => {
    agent = await RelayedAgent.start();
    link = openAgentLink({ agentSocket: agent.agentSocket, agentTransport: 'virtio-serial' } as VmmHandle);
    await link.waitReady(20_000);
    d = await startFilesDaemon({ dev: link.guest });
    g = join(d.dir, 'guest');
    h = join(d.dir, 'host');
    await mkdir(g);
    await mkdir(h);
  });
  after(async () => {
    link?.close();
    await agent?.close();
    await d?.close();
  });

  test('write, read, stat, list, mkdir, move and remove', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 5);
    const path = join(g, 'deep/er/blob');
    assert.equal((await d.client.writeFile('dev', path, Readable.from([data]), { mode: 0o640, mkdirs: true })).size, data.length);
    assert.equal((await lstat(path)).mode & 0o777, 0o640);
    const r = await d.client.readFile('dev', path);
    const chunks: Buffer[] = [];
    for await (const c of r.stream) chunks.push(c as Buffer);
    assert.equal(sha(Buffer.concat(chunks)), sha(data));
    assert.equal((await r.done).size, data.length);

    const st = await d.client.statFile('dev', path);
    assert.deepEqual([st.type, st.size, st.mode & 0o777], ['file', data.length, 0o640]);
    await d.client.makeDir('dev', { path: join(g, 'm/n'), parents: true });
    await d.client.moveFile('dev', { from: path, to: join(g, 'm/n/moved') });
    const list = await d.client.listFiles('dev', join(g, 'm/n'));
    assert.deepEqual(
      list.entries.map((e) => e.name),
      ['moved'],
    );
    await d.client.removeFile('dev', join(g, 'm'), { recursive: true });
    await assert.rejects(lstat(join(g, 'm')));
  });

  test('errors keep their meaning: a missing file is not_found, a symlink is not read through', async () => {
    await assert.rejects(d.client.statFile('dev', join(g, 'nope')), (e: BangerError) => e.code === 'not_found');
    // Refused before the first byte: the answer is the error itself (not a 200 and a trailer).
    await assert.rejects(d.client.readFile('dev', join(g, 'nope')), (e: BangerError) => e.code === 'not_found');
    await writeFile(join(h, 'host-secret'), 'secret');
    await symlink(join(h, 'host-secret'), join(g, 'link'));
    await assert.rejects(
      d.client.readFile('dev', join(g, 'link')).then(async (r) => {
        for await (const _ of r.stream);
        return r.done;
      }),
      (e: unknown) => e instanceof BangerError,
    );
  });

  test('vm cp round trip host → guest → host keeps contents, modes and inner links', async () => {
    const src = join(h, 'tree');
    await mkdir(join(src, 'a/b'), { recursive: true });
    await writeFile(join(src, 'a/b/big'), randomBytes(2 * 1024 * 1024));
    await writeFile(join(src, 'run.sh'), '#!/bin/sh\n');
    await chmod(join(src, 'run.sh'), 0o755);
    await writeFile(join(src, 'a/secret'), 's');
    await chmod(join(src, 'a/secret'), 0o600);
    await chmod(join(src, 'a/b'), 0o750);
    await symlink('../run.sh', join(src, 'a/run-link'));
    await writeFile(join(src, 'empty'), '');

    await copyHostToGuest(d.client, src, 'dev', g, { archive: false });
    assert.deepEqual(await manifest(join(g, 'tree')), await manifest(src));
    const back = join(h, 'back');
    await copyGuestToHost(d.client, 'dev', join(g, 'tree'), back, { archive: false });
    assert.deepEqual(await manifest(back), await manifest(src));
  });

  test('file sync over the real channel: a directory with the entry mode, a file keeping its own', async () => {
    const src = join(h, 'agent-auth');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'sub/token'), 't');
    await writeFile(join(h, 'single'), 'one');
    await chmod(join(h, 'single'), 0o604);
    const sync = new FileSyncService({
      entries: [
        { host: src, guest: join(g, 'synced/agent-auth'), mode: 0o600 },
        { host: join(h, 'single'), guest: join(g, 'synced/single') },
      ],
      guest: async () => link.guest,
      runner: new FakeRunner(() => 'missing'),
      log: pino({ level: 'silent' }),
      gitIdentity: async () => ({ name: 'Real Agent', email: 'ra@example.org' }),
      gitconfigPath: join(g, 'gitconfig'),
    });
    await sync.run({ id: 'vm1', name: 'dev' });
    assert.equal((await lstat(join(g, 'synced/agent-auth/sub/token'))).mode & 0o777, 0o600);
    assert.equal((await lstat(join(g, 'synced/single'))).mode & 0o777, 0o604);
    assert.equal(await readFile(join(g, 'gitconfig'), 'utf8'), '[user]\n\tname = "Real Agent"\n\temail = "ra@example.org"\n');
  });
});
