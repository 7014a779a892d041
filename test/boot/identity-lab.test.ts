import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../server/lab/lab.ts';
import { addClientNamespace, type ClientNamespace } from '../../server/lab/netns.ts';
import { addImage, DirArtifactStore } from '../http/fixtures.ts';

/**
 * A victim and an attacker on one segment with `netboot serve` (real packets, real kernel
 * neighbour table, real DHCP): the attacker, a host with its own MAC, asks for the victim's
 * script, layer and timeline, posts events for it and forges DHCP packets with its MAC. It gets
 * nothing, the victim gets everything, and the attempts show on the victim's timeline.
 */
const VICTIM = '52:54:00:d1:00:01';
const VICTIM_HYP = VICTIM.replace(/:/g, '-');
const ATTACKER = '52:54:00:d1:00:66';
const READ_TOKEN = 'read-token-for-the-identity-test';

/** One DHCPDISCOVER from port 68 with `chaddr` = mac, whatever the sender's own MAC is. */
const FORGE_DISCOVER = `
import socket, sys
mac = bytes.fromhex(sys.argv[1].replace(':', ''))
# op htype hlen hops, xid, secs flags, ciaddr yiaddr siaddr giaddr, chaddr (16), sname + file (192): cookie at 236
p = bytes([1, 1, 6, 0]) + b'\\x12\\x34\\x56\\x78' + bytes(4) + bytes(16) + mac + bytes(10) + bytes(192)
assert len(p) == 236
p += b'\\x63\\x82\\x53\\x63' + bytes([53, 1, 1, 60, 9]) + b'PXEClient' + bytes([255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(('0.0.0.0', 68))
s.sendto(p, ('255.255.255.255', 67))
s.settimeout(10)
while True:
    reply = s.recv(1500)
    if reply[4:8] == b'\\x12\\x34\\x56\\x78' and reply[28:34] == mac:
        print('answered')
        break
`;

describe.each([
  { mode: 'proxy', subnet: 221 },
  { mode: 'full', subnet: 222 },
] as const)('identity evidence on a shared segment: DHCP $mode', ({ mode, subnet }) => {
  let dir: string;
  let lab: Lab | undefined;
  let victim: ClientNamespace | undefined;
  let attacker: ClientNamespace | undefined;
  const server = `10.77.${subnet}.1`;
  const base = `http://${server}:8080`;

  /** curl from a namespace: status and body. */
  async function get(from: ClientNamespace, path: string, headers: string[] = []): Promise<{ status: number; body: string }> {
    const { stdout } = await from.exec('curl', ['-sS', '-m', '10', ...headers.flatMap((h) => ['-H', h]), '-w', '\n%{http_code}', `${base}${path}`]);
    const cut = stdout.lastIndexOf('\n');
    return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
  }
  async function postEvent(from: ClientNamespace, mac: string, token?: string): Promise<number> {
    const args = ['-s', '-m', '10', '-o', '/dev/null', '-w', '%{http_code}', '-H', 'Content-Type: application/json', ...(token ? ['-H', `Authorization: Bearer ${token}`] : [])];
    const { stdout } = await from.exec('curl', [...args, '-d', '{"phase":"up","t":12.5}', `${base}/api/machines/${mac.replace(/:/g, '-')}/events`]);
    return Number(stdout);
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `netboot-identity-${mode}-`));
    // A built image in the real cache's layout: a real squashfs with the image's account files.
    const images = join(dir, 'cache', 'images');
    await mkdir(images, { recursive: true });
    const { id } = addImage(new DirArtifactStore(images), 'demo');
    await writeFile(join(images, 'demo.current'), JSON.stringify({ id }));
    await mkdir(join(dir, 'machines', 'victim', 'secrets', 'etc'), { recursive: true });
    await writeFile(join(dir, 'machines', 'victim', 'secrets', 'etc', 'wg.key'), 'VICTIM-SECRET\n');
    const configFile = join(dir, 'netboot.yaml');
    await writeFile(
      configFile,
      stringify({
        server: {
          address: server,
          stateDir: join(dir, 'state'),
          cacheDir: join(dir, 'cache'),
          api: { readToken: READ_TOKEN },
          dhcp: mode === 'full' ? { mode, pool: { start: `10.77.${subnet}.50`, end: `10.77.${subnet}.60` } } : { mode },
        },
        images: { demo: { source: `oci-archive:${join(dir, 'never-built.tar')}` } },
        machines: { [VICTIM]: { hostname: 'victim' } },
        defaults: { image: 'demo', unknown: 'deny' },
      }),
    );
    lab = await Lab.start({ configFile, logDir: join(dir, 'logs') });
    victim = await addClientNamespace(lab.segment, { mac: VICTIM });
    // Full mode leases nothing to an unknown MAC under `deny`: the attacker picks an address itself.
    attacker = await addClientNamespace(lab.segment, { mac: ATTACKER, ...(mode === 'full' ? { address: `10.77.${subnet}.99` } : {}) });
    // udhcpc applies its lease with this script (busybox ships none).
    const applyLease = join(dir, 'udhcpc.sh');
    await writeFile(applyLease, '#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/24" dev "$interface" ;; esac\n', { mode: 0o755 });
    const udhcpc = ['udhcpc', '-i', 'eth0', '-n', '-q', '-t', '5', '-T', '1', '-s', applyLease];
    await victim.exec('busybox', udhcpc, { timeoutMs: 30_000 });
    if (mode === 'proxy') await attacker.exec('busybox', udhcpc, { timeoutMs: 30_000 });
  }, 180_000);

  afterAll(async () => {
    await attacker?.destroy();
    await victim?.destroy();
    await lab?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('the attacker gets no script, no signed layer, no timeline, and cannot post events; the victim gets all of it', async () => {
    const a = attacker!;
    const v = victim!;
    const script = `/machines/${VICTIM_HYP}/boot.ipxe`;
    // The attacker forges DHCP from the victim's MAC first: the neighbour table still names it.
    // The server took it for the victim's DHCP packet (it answered): the forgery is real.
    expect((await a.exec('python3', ['-c', FORGE_DISCOVER, VICTIM])).stdout).toBe('answered\n');
    const stolenScript = await get(a, script);
    expect(stolenScript.status).toBe(403);
    expect(stolenScript.body).not.toMatch(/netboot\.layer=|netboot\.token=/);

    const own = await get(v, script);
    expect(own.status).toBe(200);
    const layerUrl = /netboot\.layer=(\S+)/.exec(own.body)![1]!;
    const token = /netboot\.token=(\S+)/.exec(own.body)![1]!;

    // The signed URL leaked (say, read off a screen): useless from another host.
    const stolenLayer = await get(a, layerUrl.slice(base.length));
    expect(stolenLayer.status).toBe(403);
    // The public part stays public, without secrets or host keys.
    const publicLayer = await get(a, `/machines/${VICTIM_HYP}/layer`);
    expect(publicLayer.status).toBe(200);
    expect(publicLayer.body).not.toContain('VICTIM-SECRET');
    expect(publicLayer.body).not.toContain('PRIVATE KEY');

    expect((await get(a, '/api/machines')).status).toBe(401);
    expect(await postEvent(a, VICTIM)).toBe(401);
    expect(await postEvent(a, VICTIM, `${token.split('.')[0]}.${'0'.repeat(64)}`)).toBe(401);
    expect(await postEvent(a, '52:54:00:00:be:ef')).toBe(401);

    const layer = await get(v, layerUrl.slice(base.length));
    expect(layer.status).toBe(200);
    expect(layer.body).toContain('VICTIM-SECRET');
    expect(layer.body).toContain('PRIVATE KEY');
    expect(await postEvent(v, VICTIM, token)).toBe(202);

    const seen = JSON.parse((await get(v, `/api/machines/${VICTIM_HYP}`, [`Authorization: Bearer ${READ_TOKEN}`])).body) as {
      state: string;
      security: { kind: string; detail: string; peer?: string }[];
    };
    expect(seen.state).toBe('up');
    expect(seen.security.map((s) => s.kind)).toEqual(['identity-script', 'identity-layer', 'event-token', 'event-token']);
    if (mode === 'proxy') expect(seen.security[0]!.peer).toContain(ATTACKER);
    const listing = JSON.parse((await get(v, '/api/machines', [`Authorization: Bearer ${READ_TOKEN}`])).body) as { machines: { mac: string }[] };
    expect(listing.machines.map((m) => m.mac)).toEqual([VICTIM]);

    const metrics = (await get(a, '/metrics')).body;
    expect(metrics).toMatch(/netboot_security_events_total\{kind="identity-script"\} 1/);
    // Nothing was created for the made-up MAC.
    expect(existsSync(join(dir, 'state', 'unknown-machines'))).toBe(false);
    expect((await readdir(join(dir, 'state', 'machines'))).sort()).toEqual([VICTIM_HYP]);
  });
});
