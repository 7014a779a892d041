import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../server/lab/lab.ts';
import { addClientNamespace, type ClientNamespace } from '../../server/lab/netns.ts';
import { addImage, DirArtifactStore } from '../http/fixtures.ts';

/**
 * Issue 13's closing probe: a second host on the segment (own MAC, any address it likes, raw
 * DHCP with any chaddr) tries every attack of the issue against `netboot serve` in proxy and in
 * full mode, under `defaults.unknown: menu` (the policy under which made-up MACs used to cost
 * ssh-keygen runs and state files). It reads no machine's secrets and changes no machine.
 *
 * The full-mode cases that identity-lab.test.ts does not cover: the victim went offline, and
 * the attacker takes its leased address on its own NIC, or first forges DISCOVER/REQUEST with
 * the victim's chaddr so the server binds an address to the victim's MAC, then uses that one.
 * The lease then names the attacker's address; only the kernel's neighbour entry (the
 * attacker's own MAC) tells them apart.
 */
const VICTIM = '52:54:00:a1:30:01';
const VICTIM_HYP = VICTIM.replace(/:/g, '-');
const ATTACKER = '52:54:00:a1:30:66';
const READ_TOKEN = 'read-token-for-the-a13-probe';

/**
 * DISCOVER then SELECTING REQUEST with chaddr = argv[1] (whatever the sender's own MAC); prints
 * the address the server ACKed, or "no-ack <type>".
 */
const FORGE_LEASE = `
import socket, struct, sys
mac = bytes.fromhex(sys.argv[1].replace(':', ''))
xid = b'\\x13\\x13\\x00\\x01'
def packet(options):
    p = bytes([1, 1, 6, 0]) + xid + bytes(4) + bytes(16) + mac + bytes(10) + bytes(192)
    return p + b'\\x63\\x82\\x53\\x63' + options + bytes([255])
def options(reply):
    found, i = {}, 240
    while i < len(reply) and reply[i] != 255:
        if reply[i] == 0:
            i += 1
            continue
        found[reply[i]] = reply[i + 2:i + 2 + reply[i + 1]]
        i += 2 + reply[i + 1]
    return found
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(('0.0.0.0', 68))
s.settimeout(10)
def ask(opts, want):
    s.sendto(packet(opts), ('255.255.255.255', 67))
    while True:
        reply = s.recv(1500)
        if reply[4:8] == xid and reply[28:34] == mac:
            o = options(reply)
            if o.get(53) in want:
                return reply, o
            print('no-ack', o.get(53)[0])
            sys.exit(0)
offer, o = ask(bytes([53, 1, 1]), [b'\\x02'])
yiaddr = offer[16:20]
ack, o = ask(bytes([53, 1, 3, 50, 4]) + yiaddr + bytes([54, 4]) + o[54], [b'\\x05'])
print(socket.inet_ntoa(ack[16:20]))
`;

describe.each([
  { mode: 'proxy', subnet: 71 },
  { mode: 'full', subnet: 72 },
] as const)('a second host on the segment probes every attack of issue 13: DHCP $mode', ({ mode, subnet }) => {
  let dir: string;
  let lab: Lab | undefined;
  let victim: ClientNamespace | undefined;
  let attacker: ClientNamespace | undefined;
  const net = `10.88.${subnet}`;
  const base = `http://${net}.1:8080`;
  let applyLease: string;
  /** The victim's signed layer URL (path and query), as a leak would hand it to the attacker. */
  let victimLayer = '';
  let imageId = '';

  async function get(from: ClientNamespace, path: string, headers: string[] = []): Promise<{ status: number; body: string }> {
    const { stdout } = await from.exec('curl', ['-sS', '-m', '10', ...headers.flatMap((h) => ['-H', h]), '-w', '\n%{http_code}', `${base}${path}`]);
    const cut = stdout.lastIndexOf('\n');
    return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
  }
  async function postEvent(from: ClientNamespace, mac: string, token?: string, phase = 'up'): Promise<number> {
    const args = ['-s', '-m', '10', '-o', '/dev/null', '-w', '%{http_code}', '-H', 'Content-Type: application/json', ...(token ? ['-H', `Authorization: Bearer ${token}`] : [])];
    const { stdout } = await from.exec('curl', [...args, '-d', JSON.stringify({ phase, t: 1 }), `${base}/api/machines/${mac.replace(/:/g, '-')}/events`]);
    return Number(stdout);
  }
  const udhcpc = (c: ClientNamespace, extra: string[] = []) =>
    c.exec('busybox', ['udhcpc', '-i', 'eth0', '-n', '-q', '-t', '5', '-T', '1', '-s', applyLease, ...extra], { timeoutMs: 30_000 });
  const addressOf = async (c: ClientNamespace) => /inet (\S+)\//.exec((await c.exec('ip', ['-4', 'addr', 'show', 'dev', 'eth0'])).stdout)?.[1];
  /** Puts `address` on the attacker's own NIC (its own MAC) and forgets its ARP cache, so its next packet announces the pairing. */
  const takeAddress = async (c: ClientNamespace, address: string) => {
    await c.exec('ip', ['addr', 'flush', 'dev', 'eth0']);
    await c.exec('ip', ['addr', 'add', `${address}/24`, 'dev', 'eth0']);
    // Removing the last address dropped every route through eth0, the broadcast one too.
    await c.exec('ip', ['route', 'replace', '255.255.255.255/32', 'dev', 'eth0']);
    await c.exec('ip', ['neigh', 'flush', 'dev', 'eth0']);
  };
  /** Waits until the server log has a warn line naming the victim as claimed and the attacker as the peer. */
  async function warnLinesNamingBoth(count: number): Promise<void> {
    const needle = `claimed ${VICTIM}, peer ${ATTACKER}`;
    const deadline = Date.now() + 20_000;
    for (;;) {
      const lines = (await readFile(lab!.serverLog, 'utf8')).split('\n').filter((l) => l.includes(needle) && l.includes('"level":40'));
      if (lines.length >= count) return;
      if (Date.now() > deadline) throw new Error(`${lines.length} warn lines name both MACs, expected ${count}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const securityKinds = async () =>
    (JSON.parse((await get(attacker!, `/api/machines/${VICTIM_HYP}`, [`Authorization: Bearer ${READ_TOKEN}`])).body) as { security: { kind: string }[] }).security.map((s) => s.kind);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `netboot-a13-probe-${mode}-`));
    const images = join(dir, 'cache', 'images');
    await mkdir(images, { recursive: true });
    const { id } = addImage(new DirArtifactStore(images), 'demo');
    imageId = id;
    await writeFile(join(images, 'demo.current'), JSON.stringify({ id }));
    await mkdir(join(dir, 'machines', 'victim', 'secrets', 'etc'), { recursive: true });
    await writeFile(join(dir, 'machines', 'victim', 'secrets', 'etc', 'wg.key'), 'VICTIM-SECRET\n');
    const configFile = join(dir, 'netboot.yaml');
    await writeFile(
      configFile,
      stringify({
        server: {
          address: `${net}.1`,
          stateDir: join(dir, 'state'),
          cacheDir: join(dir, 'cache'),
          api: { readToken: READ_TOKEN },
          dhcp: mode === 'full' ? { mode, pool: { start: `${net}.50`, end: `${net}.60` } } : { mode },
        },
        images: { demo: { source: `oci-archive:${join(dir, 'never-built.tar')}` } },
        machines: { [VICTIM]: { hostname: 'victim' } },
        defaults: { image: 'demo', unknown: 'menu' },
      }),
    );
    lab = await Lab.start({ configFile, logDir: join(dir, 'logs') });
    victim = await addClientNamespace(lab.segment, { mac: VICTIM });
    attacker = await addClientNamespace(lab.segment, { mac: ATTACKER });
    applyLease = join(dir, 'udhcpc.sh');
    await writeFile(applyLease, '#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/24" dev "$interface" ;; esac\n', { mode: 0o755 });
    await udhcpc(victim);
    // Under `menu` an unknown MAC is served: in full mode the attacker gets a (short) lease of its own.
    await udhcpc(attacker);
  }, 180_000);

  afterAll(async () => {
    await attacker?.destroy();
    await victim?.destroy();
    await lab?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('with the victim on the segment: no script, no signed layer, no API reads, no events, not even with its own valid event token', async () => {
    const a = attacker!;
    const stolenScript = await get(a, `/machines/${VICTIM_HYP}/boot.ipxe`);
    expect(stolenScript.status).toBe(403);
    expect(stolenScript.body).not.toMatch(/netboot\.layer=|netboot\.token=/);

    const own = await get(victim!, `/machines/${VICTIM_HYP}/boot.ipxe`);
    expect(own.status).toBe(200);
    victimLayer = /netboot\.layer=(\S+)/.exec(own.body)![1]!.slice(base.length);
    expect((await get(a, victimLayer)).status).toBe(403);
    await warnLinesNamingBoth(2);

    expect((await get(a, '/api/machines')).status).toBe(401);
    expect((await get(a, `/api/machines/${VICTIM_HYP}`)).status).toBe(401);
    expect((await get(a, '/api/machines', ['Authorization: Bearer guessed'])).status).toBe(403);

    // The attacker boots itself from the menu: a real event token, for its own MAC only.
    const mine = await get(a, `/machines/${ATTACKER.replace(/:/g, '-')}/boot.ipxe?image=demo`);
    expect(mine.status).toBe(200);
    const myToken = /netboot\.token=(\S+)/.exec(mine.body)![1]!;
    expect(await postEvent(a, ATTACKER, myToken)).toBe(202);
    for (const token of [undefined, 'nonsense', myToken, `${myToken.split('.')[0]}.${'0'.repeat(64)}`]) {
      expect(await postEvent(a, VICTIM, token, 'failed')).toBe(401);
    }
    const kinds = await securityKinds();
    expect(kinds.filter((k) => k === 'identity-script')).toHaveLength(1);
    expect(kinds.filter((k) => k === 'identity-layer')).toHaveLength(1);
    expect(kinds.filter((k) => k === 'event-token')).toHaveLength(4);
    const victimState = JSON.parse((await get(a, `/api/machines/${VICTIM_HYP}`, [`Authorization: Bearer ${READ_TOKEN}`])).body) as { state: string };
    expect(victimState.state).toBe('booting');
  });

  it("the victim's timeline takes no phases from the attacker's downloads: artifacts naming its MAC, TFTP after asking for its public layer", async () => {
    const a = attacker!;
    const timeline = async () => JSON.stringify((JSON.parse((await get(a, `/api/machines/${VICTIM_HYP}`, [`Authorization: Bearer ${READ_TOKEN}`])).body) as { boots: unknown }).boots);
    const before = await timeline();
    for (const name of ['vmlinuz', 'initrd.img', 'rootfs.squashfs']) expect((await get(a, `/images/${imageId}/${name}?mac=${VICTIM_HYP}`)).status).toBe(200);
    expect((await get(a, `/machines/${VICTIM_HYP}/layer`)).status).toBe(200);
    await a.exec('curl', ['-sS', '-m', '20', '-o', '/dev/null', `tftp://${net}.1/ipxe.efi`]);
    // The TFTP transfer was complete (the server counted it) before the timeline is compared.
    expect((await get(a, '/metrics')).body).toMatch(/netboot_tftp_transfers_total\{outcome="complete"\} [1-9]/);
    expect(await timeline()).toBe(before);
    // The victim's own download with the same claim lands on its boot.
    expect((await get(victim!, `/images/${imageId}/vmlinuz?mac=${VICTIM_HYP}`)).status).toBe(200);
    const boots = JSON.parse(await timeline()) as { phases: { phase: string; source: string }[] }[];
    expect(boots.at(-1)!.phases.filter((p) => p.phase === 'kernel' && p.source === 'http')).toHaveLength(1);
  });

  it('made-up MACs under `menu`: layers, menus and forged signed URLs create no state', async () => {
    const a = attacker!;
    for (let i = 0; i < 20; i++) {
      const mac = `02-a1-30-00-00-${i.toString(16).padStart(2, '0')}`;
      expect((await get(a, `/machines/${mac}/layer`)).status).toBe(200);
      expect((await get(a, `/machines/${mac}/layer?boot=00&image=x&exp=9999999999&sig=${'0'.repeat(64)}`)).status).toBe(403);
      expect((await get(a, `/machines/${mac}/boot.ipxe`)).body).toContain('menu');
    }
    expect(existsSync(join(dir, 'state', 'unknown-machines'))).toBe(false);
    // Nobody fetched a signed layer yet: no host keys for anyone.
    expect(existsSync(join(dir, 'state', 'machines')) ? await readdir(join(dir, 'state', 'machines')) : []).toEqual([]);
  });

  it.runIf(mode === 'full')('the victim went offline: its leased address on the attacker\'s NIC gets no script', async () => {
    const a = attacker!;
    const leased = (await addressOf(victim!))!;
    expect(leased).toMatch(new RegExp(`^${net.replace(/\./g, '\\.')}\\.5\\d$`));
    await victim!.exec('ip', ['link', 'set', 'eth0', 'down']);
    await takeAddress(a, leased);
    const stolen = await get(a, `/machines/${VICTIM_HYP}/boot.ipxe`);
    expect(stolen.status).toBe(403);
    expect(stolen.body).not.toMatch(/netboot\.layer=|netboot\.token=/);
    const layer = await get(a, victimLayer);
    expect(layer.status).toBe(403);
    expect(layer.body).not.toContain('VICTIM-SECRET');
    const kinds = await securityKinds();
    expect(kinds.filter((k) => k === 'identity-script')).toHaveLength(2);
    expect(kinds.filter((k) => k === 'identity-layer')).toHaveLength(2);
    await warnLinesNamingBoth(4);
  });

  it.runIf(mode === 'full')("forged DISCOVER/REQUEST with the victim's chaddr bind an address to its MAC; from the attacker's NIC that address gets nothing", async () => {
    const a = attacker!;
    await takeAddress(a, `${net}.99`);
    // udhcpc -R: the victim releases its lease as it leaves, so the forgery binds a new one.
    await victim!.exec('ip', ['link', 'set', 'eth0', 'up']);
    await udhcpc(victim!, ['-R']);
    await victim!.exec('ip', ['link', 'set', 'eth0', 'down']);
    const bound = (await a.exec('python3', ['-c', FORGE_LEASE, VICTIM])).stdout.trim();
    expect(bound).toMatch(/^10\.88\.72\.\d+$/);
    await takeAddress(a, bound);
    const stolen = await get(a, `/machines/${VICTIM_HYP}/boot.ipxe`);
    expect(stolen.status).toBe(403);
    expect(stolen.body).not.toMatch(/netboot\.layer=|netboot\.token=/);
  });

  it('the public layer of the victim carries no secret; /metrics and /healthz stay open', async () => {
    const a = attacker!;
    const layer = await get(a, `/machines/${VICTIM_HYP}/layer`);
    expect(layer.status).toBe(200);
    expect(layer.body).not.toContain('VICTIM-SECRET');
    expect(layer.body).not.toContain('PRIVATE KEY');
    expect(layer.body).not.toMatch(/root:\$/);
    expect((await get(a, '/healthz')).status).toBe(200);
    expect((await get(a, '/metrics')).body).toMatch(/netboot_security_events_total\{kind="event-token"\} 4/);
  });
});
