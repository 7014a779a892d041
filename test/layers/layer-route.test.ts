import { execFile } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, readFileSync, readlinkSync, existsSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { get as httpGet } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { addImage, IMAGE_PASSWD } from '../http/fixtures.ts';
import { baseYaml, harness, MAC_HYP, type Harness } from '../http/setup.ts';
import { MAX_DELIVERIES } from '../../server/layers/signing.ts';

const run = promisify(execFile);
let h: Harness;
afterEach(async () => h?.close());

const machines = `  52:54:00:12:34:57:
    hostname: demo2
    ip: 10.77.0.50
    sshAuthorizedKeys: ["ssh-ed25519 AAAAroot admin@desk"]
    vars:
      role: db
    users:
      - name: alice
        groups: [sudo, docker]
        passwordHash: "$6$salt$hash"
        sshAuthorizedKeys: ["ssh-ed25519 AAAAalice alice@laptop"]
      - name: old
        shell: /bin/zsh
    files:
      etc/shadow: { mode: "0640", owner: "root:shadow" }
      etc/app.conf: { mode: "0600", owner: "alice:alice" }
      opt/run.sh: { owner: alice }
      etc/motd: { mode: "0444" }
      secrets/etc/api.key: { mode: "0640", owner: "root:alice" }
`;
const MAC2 = '52:54:00:12:34:57';
const MAC2_HYP = '52-54-00-12-34-57';
const folders = {
  demo2: {
    'etc/motd.tmpl': 'Welcome to {{hostname}} ({{mac}}, {{ip}}) role={{role}} image={{image}}\n',
    'etc/app.conf': 'listen=0.0.0.0\n',
    'opt/run.sh': '#!/bin/sh\necho run\n',
    'secrets/etc/api.key': 'APIKEY\n',
    'secrets/etc/wireguard/wg0.key': 'WGKEY\n',
  },
};

async function setup(extra: Parameters<typeof baseYaml>[0] = {}, overrides = {}) {
  h = await harness(baseYaml({ machines, ...extra }), folders, overrides);
  chmodSync(join(h.dir, 'machines/demo2/opt/run.sh'), 0o755);
  symlinkSync('../usr/share/zoneinfo/Europe/Berlin', join(h.dir, 'machines/demo2/etc/localtime'));
  return addImage(h.store, 'demo');
}

/** The signed layer path from the machine's boot script, as /init would take it from netboot.layer. */
async function signedLayerPath(app: FastifyInstance, macHyp: string): Promise<string> {
  const script = (await app.inject(`/machines/${macHyp}/boot.ipxe`)).body;
  return /netboot\.layer=http:\/\/127\.0\.0\.1:8080(\S+)/.exec(script)![1]!;
}

async function unpack(tar: Buffer, name: string): Promise<string> {
  const dir = join(h.dir, 'unpacked', name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(`${dir}.tar`, tar);
  await run('tar', ['-x', '--numeric-owner', '-p', '-f', `${dir}.tar`, '-C', dir]);
  return dir;
}

function meta(root: string, path: string): [string, number, number] {
  const st = lstatSync(join(root, path));
  return [(st.mode & 0o7777).toString(8), st.uid, st.gid];
}

describe('per-machine layer', () => {
  it('signed layer: every generated file, owners, modes, merged accounts, templates, secrets', async () => {
    await setup();
    const res = await h.app.inject(await signedLayerPath(h.app, MAC2_HYP));
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('application/x-tar');
    expect(res.headers['cache-control']).toBe('no-store');
    const root = await unpack(res.rawPayload, 'signed');
    const read = (p: string) => readFileSync(join(root, p), 'utf8');

    expect(read('etc/hostname')).toBe('demo2\n');
    expect(read('etc/hosts')).toContain('10.77.0.50\tdemo2\n');
    expect(read('etc/hosts')).toMatch(/^127\.0\.0\.1\tlocalhost$/m);
    expect(read('etc/machine-id')).toMatch(/^[0-9a-f]{32}\n$/);
    expect(meta(root, 'etc/machine-id')).toEqual(['444', 0, 0]);

    const passwd = read('etc/passwd');
    expect(passwd.startsWith(IMAGE_PASSWD.replace('old:x:1000:1000::/home/old:/bin/sh', 'old:x:1000:1000::/home/old:/bin/zsh'))).toBe(true);
    expect(passwd).toContain('alice:x:1001:1001::/home/alice:/bin/bash\n');
    expect(read('etc/group')).toMatch(/^sudo:x:27:alice$/m);
    expect(read('etc/shadow')).toMatch(/^alice:\$6\$salt\$hash:/m);
    expect(read('etc/gshadow')).toMatch(/^docker:!::alice$/m);
    expect(meta(root, 'etc/shadow')).toEqual(['640', 0, 42]);
    expect(meta(root, 'etc/passwd')).toEqual(['644', 0, 0]);

    expect(read('root/.ssh/authorized_keys')).toBe('ssh-ed25519 AAAAroot admin@desk\n');
    expect(meta(root, 'root/.ssh')).toEqual(['700', 0, 0]);
    expect(meta(root, 'root/.ssh/authorized_keys')).toEqual(['600', 0, 0]);
    expect(meta(root, 'home/alice')).toEqual(['700', 1001, 1001]);
    expect(meta(root, 'home/alice/.ssh/authorized_keys')).toEqual(['600', 1001, 1001]);
    expect(read('home/alice/.ssh/authorized_keys')).toBe('ssh-ed25519 AAAAalice alice@laptop\n');
    expect(meta(root, 'home/old')).toEqual(['700', 1000, 1000]);

    for (const type of ['ed25519', 'ecdsa']) {
      expect(read(`etc/ssh/ssh_host_${type}_key`)).toContain('BEGIN OPENSSH PRIVATE KEY');
      expect(meta(root, `etc/ssh/ssh_host_${type}_key`)).toEqual(['600', 0, 0]);
      expect(meta(root, `etc/ssh/ssh_host_${type}_key.pub`)).toEqual(['644', 0, 0]);
    }

    expect(read('etc/motd')).toBe('Welcome to demo2 (52:54:00:12:34:57, 10.77.0.50) role=db image=demo\n');
    expect(existsSync(join(root, 'etc/motd.tmpl'))).toBe(false);
    expect(meta(root, 'etc/motd')).toEqual(['444', 0, 0]);
    expect(meta(root, 'etc/app.conf')).toEqual(['600', 1001, 1001]);
    expect(meta(root, 'opt/run.sh')).toEqual(['755', 1001, 1001]);
    expect(readlinkSync(join(root, 'etc/localtime'))).toBe('../usr/share/zoneinfo/Europe/Berlin');

    expect(read('etc/api.key')).toBe('APIKEY\n');
    expect(meta(root, 'etc/api.key')).toEqual(['640', 0, 1001]);
    expect(read('etc/wireguard/wg0.key')).toBe('WGKEY\n');
    expect(meta(root, 'etc/wireguard/wg0.key')).toEqual(['600', 0, 0]);
    expect(existsSync(join(root, 'secrets'))).toBe(false);

    const layer = h.timeline.current(MAC2)!.phases.find((p) => p.phase === 'layer')!;
    expect(layer).toMatchObject({ source: 'http', bytes: res.rawPayload.length });
  });

  it(`signed URLs serve ${MAX_DELIVERIES} deliveries per boot, expire, and are bound to their MAC`, async () => {
    let clock = Date.parse('2026-06-01T12:00:00Z');
    await setup({}, { now: () => clock, layerTtlSeconds: 60 });
    const path = await signedLayerPath(h.app, MAC2_HYP);
    expect((await h.app.inject(path.replace(/sig=([0-9a-f])/, (_m, c: string) => `sig=${c === '0' ? '1' : '0'}`))).statusCode).toBe(403);
    expect((await h.app.inject(path.replace(MAC2_HYP, MAC_HYP))).statusCode).toBe(403);
    expect((await h.app.inject(path.replace(/exp=(\d+)/, (_m, e: string) => `exp=${Number(e) + 3600}`))).statusCode).toBe(403);
    const ledger = join(h.deps.stateDir, 'used-layer-urls.jsonl');
    for (let i = 0; i < MAX_DELIVERIES; i++) {
      expect((await h.app.inject(path)).statusCode).toBe(200);
      // On disk before the response went out: a crash after any byte of it cannot forget the delivery.
      expect(readFileSync(ledger, 'utf8').trim().split('\n')).toHaveLength(i + 1);
    }
    const again = await h.app.inject(path);
    expect(again.statusCode).toBe(410);
    expect(again.body).toContain(`already delivered ${MAX_DELIVERIES} times`);
    expect((await (await h.restart()).inject(path)).statusCode).toBe(410);

    const next = await signedLayerPath(h.app, MAC2_HYP);
    expect(next).not.toBe(path);
    clock += 61_000;
    expect((await h.app.inject(next)).statusCode).toBe(410);
  });

  it('unsigned layer: public part only, with an ETag that answers 304; asking for it creates nothing', async () => {
    await setup();
    const before = await h.app.inject(`/machines/${MAC2_HYP}/layer`);
    expect(before.statusCode).toBe(200);
    // No host keys yet: the public layer never generates them (nor any other state).
    expect(existsSync(join(h.dir, 'state/machines'))).toBe(false);
    expect(existsSync(join(await unpack(before.rawPayload, 'public-before'), 'etc/ssh'))).toBe(false);
    await h.app.inject(await signedLayerPath(h.app, MAC2_HYP));
    const res = await h.app.inject(`/machines/${MAC2_HYP}/layer`);
    expect(res.statusCode).toBe(200);
    const root = await unpack(res.rawPayload, 'public');
    expect(existsSync(join(root, 'etc/api.key'))).toBe(false);
    expect(existsSync(join(root, 'etc/wireguard'))).toBe(false);
    expect(existsSync(join(root, 'etc/ssh/ssh_host_ed25519_key'))).toBe(false);
    expect(existsSync(join(root, 'etc/shadow'))).toBe(false);
    expect(existsSync(join(root, 'etc/gshadow'))).toBe(false);
    expect(readFileSync(join(root, 'etc/passwd'), 'utf8')).toContain('alice:x:1001:1001:');
    expect(existsSync(join(root, 'etc/ssh/ssh_host_ed25519_key.pub'))).toBe(true);
    expect(readFileSync(join(root, 'etc/hostname'), 'utf8')).toBe('demo2\n');
    expect(res.headers.etag).toMatch(/^"[0-9a-f]{64}"$/);
    const cached = await h.app.inject({ url: `/machines/${MAC2_HYP}/layer`, headers: { 'if-none-match': res.headers.etag as string } });
    expect(cached.statusCode).toBe(304);
    // An edited machine file changes the layer (and its ETag) with no rebuild step.
    writeFileSync(join(h.dir, 'machines/demo2/etc/app.conf'), 'listen=127.0.0.1\n');
    const edited = await h.app.inject({ url: `/machines/${MAC2_HYP}/layer`, headers: { 'if-none-match': res.headers.etag as string } });
    expect(edited.statusCode).toBe(200);
    expect(edited.headers.etag).not.toBe(res.headers.etag);
  });

  it('machine-id and SSH host keys are stable across requests, boots and a server restart; distinct per machine', async () => {
    await setup();
    const identity = async (app: FastifyInstance, mac: string, name: string) => {
      const root = await unpack((await app.inject(await signedLayerPath(app, mac))).rawPayload, name);
      return [readFileSync(join(root, 'etc/machine-id'), 'utf8'), readFileSync(join(root, 'etc/ssh/ssh_host_ed25519_key'), 'utf8'), readFileSync(join(root, 'etc/ssh/ssh_host_ecdsa_key.pub'), 'utf8')];
    };
    const first = await identity(h.app, MAC2_HYP, 'a');
    expect(await identity(h.app, MAC2_HYP, 'b')).toEqual(first);
    const restarted = await h.restart();
    expect(await identity(restarted, MAC2_HYP, 'c')).toEqual(first);
    const other = await identity(h.app, MAC_HYP, 'd');
    expect(other[0]).not.toBe(first[0]);
    expect(other[1]).not.toBe(first[1]);
  });

  it('full-DHCP mode: the script and the signed layer go only to the address leased to the MAC', async () => {
    let leased: string | undefined = '10.77.0.50';
    await setup(
      { identity: 'evidence', server: '  dhcp:\n    mode: full\n    pool: { start: 10.77.0.100, end: 10.77.0.200 }' },
      { leaseLookup: (mac: string) => (mac === MAC2 ? leased : undefined) },
    );
    expect((await h.app.inject({ url: `/machines/${MAC2_HYP}/boot.ipxe`, remoteAddress: '10.77.0.99' })).statusCode).toBe(403);
    const script = (await h.app.inject({ url: `/machines/${MAC2_HYP}/boot.ipxe`, remoteAddress: '10.77.0.50' })).body;
    const path = /netboot\.layer=http:\/\/127\.0\.0\.1:8080(\S+)/.exec(script)![1]!;
    const refused = await h.app.inject({ url: path, remoteAddress: '10.77.0.99' });
    expect(refused.statusCode).toBe(403);
    expect(refused.body).toContain('only served to');
    expect(h.timeline.securityEvents(MAC2).map((e) => e.kind)).toEqual(['identity-script', 'identity-layer']);
    leased = '10.77.0.99';
    // The refused attempt did not use up a delivery.
    for (let i = 0; i < MAX_DELIVERIES; i++) expect((await h.app.inject({ url: path, remoteAddress: '10.77.0.99' })).statusCode).toBe(200);
  });

  it('a symlink escaping the machine folder or an undefined template variable: a clear 500, no crash', async () => {
    await setup();
    symlinkSync('../../../netboot.yaml', join(h.dir, 'machines/demo2/etc/leak'));
    const res = await h.app.inject(`/machines/${MAC2_HYP}/layer`);
    expect(res.statusCode).toBe(500);
    expect(res.json().error).toMatch(/etc\/leak: symlink to "..\/..\/..\/netboot.yaml" points outside the machine folder/);
    await run('rm', [join(h.dir, 'machines/demo2/etc/leak')]);
    writeFileSync(join(h.dir, 'machines/demo2/etc/motd.tmpl'), 'hello {{nope}}\n');
    const bad = await h.app.inject(`/machines/${MAC2_HYP}/layer`);
    expect(bad.statusCode).toBe(500);
    expect(bad.json().error).toMatch(/motd\.tmpl:1: \{\{nope\}\} is not defined/);
  });

  it('a signed download cut off on the wire (real TCP) is taken back: the ledger gets its undo line, the boot keeps all its deliveries', async () => {
    // Bigger than the socket buffers can take (tcp_wmem + tcp_rmem maxima): it cannot be complete on our side when the client goes.
    const bufferMax = (name: string) => Number(readFileSync(`/proc/sys/net/ipv4/${name}`, 'utf8').trim().split(/\s+/)[2]);
    const big = Buffer.alloc(Math.ceil((bufferMax('tcp_wmem') + bufferMax('tcp_rmem') + (16 << 20)) / 4), 0x5a);
    h = await harness(baseYaml({ machines }), { demo2: { ...folders.demo2, 'srv/a': big, 'srv/b': big, 'srv/c': big, 'srv/d': big } });
    addImage(h.store, 'demo');
    const path = await signedLayerPath(h.app, MAC2_HYP);
    await h.app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = h.app.server.address() as AddressInfo;
    const ledger = join(h.deps.stateDir, 'used-layer-urls.jsonl');
    const cut = await new Promise<{ status?: number; linesAtFirstByte: number }>((resolve, reject) => {
      const req = httpGet({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        res.once('data', () => {
          // Counted before the first byte: the line is there while the body is still on its way.
          const linesAtFirstByte = readFileSync(ledger, 'utf8').trim().split('\n').length;
          req.destroy();
          resolve({ status: res.statusCode, linesAtFirstByte });
        });
      });
      req.on('error', (err) => (req.destroyed ? undefined : reject(err)));
    });
    expect(cut).toEqual({ status: 200, linesAtFirstByte: 1 });
    await expect.poll(() => readFileSync(ledger, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { undo?: boolean })).toEqual([{ id: expect.any(String), exp: expect.any(Number) }, { id: expect.any(String), exp: expect.any(Number), undo: true }]);
    for (let i = 0; i < MAX_DELIVERIES; i++) expect((await h.app.inject(path)).statusCode).toBe(200);
    expect((await h.app.inject(path)).statusCode).toBe(410);
  });

  it('a signed fetch that fails (a template error) does not use up the boot: fixed and retried, it is served', async () => {
    await setup();
    writeFileSync(join(h.dir, 'machines/demo2/etc/motd.tmpl'), 'hello {{nope}}\n');
    const path = await signedLayerPath(h.app, MAC2_HYP);
    expect((await h.app.inject(path)).statusCode).toBe(500);
    writeFileSync(join(h.dir, 'machines/demo2/etc/motd.tmpl'), 'hello {{hostname}}\n');
    for (let i = 0; i < MAX_DELIVERIES; i++) expect((await h.app.inject(path)).statusCode).toBe(200);
    expect((await h.app.inject(path)).statusCode).toBe(410);
  });

  it('an image that is not built: 503; a MAC with no image: 404; a bad MAC: 400', async () => {
    h = await harness(baseYaml({ defaults: '  unknown: deny' }));
    expect((await h.app.inject(`/machines/${MAC_HYP}/layer`)).statusCode).toBe(503);
    expect((await h.app.inject('/machines/52-54-00-99-99-99/layer')).statusCode).toBe(404);
    expect((await h.app.inject('/machines/zz/layer')).statusCode).toBe(400);
  });
});
