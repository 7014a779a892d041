import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MessageType, Opt, decodeMessage, encodeMessage, ipOption, messageType, type DhcpMessage } from '../../server/dhcp/codec.ts';
import { createSegment, type Segment } from '../lab/netns.ts';
import { startLabDhcp, waitForOutput } from '../../server/lab/services.ts';
import { fixture, request } from './helpers.ts';
import { addClientNamespace, DhcpChild, UdpPeer, type ClientNamespace, type Received } from './lab.ts';

/** busybox udhcpc, one lease and out; the script prints what it was given. */
async function udhcpc(client: ClientNamespace, script: string, extra: string[] = []): Promise<Record<string, string>> {
  const { stdout } = await client.exec('busybox', ['udhcpc', '-i', client.ifname, '-f', '-q', '-n', '-t', '5', '-T', '1', '-s', script, ...extra], { timeoutMs: 30_000 });
  const line = stdout.split('\n').find((l) => l.startsWith('BOUND '));
  if (!line) throw new Error(`udhcpc got no lease:\n${stdout}`);
  return Object.fromEntries(line.slice(6).split(' ').map((kv) => kv.split('=') as [string, string]));
}

// It configures the address like a real client: udhcpc sends RELEASE from it.
const SCRIPT = `#!/bin/sh
case "$1" in
  deconfig) busybox ip addr flush dev "$interface" ;;
  bound) busybox ip addr add "$ip/24" dev "$interface" ;;
esac
if [ "$1" = bound ]; then
  echo "BOUND ip=$ip serverid=$serverid siaddr=$siaddr bootfile=$boot_file router=$router dns=$dns domain=$domain hostname=$hostname lease=$lease subnet=$subnet"
fi
exit 0
`;

function decoded(r: Received): DhcpMessage {
  const d = decodeMessage(r.bytes);
  if (!d.ok) throw new Error(d.error.detail);
  return d.message;
}

describe('full mode against busybox udhcpc', () => {
  let segment: Segment;
  let dir: string;
  let script: string;
  let server: DhcpChild;
  const clients: ClientNamespace[] = [];
  const RESERVED = '02:00:00:00:0a:01';
  let rawConfig: Record<string, unknown>;
  const client = async (mac: string, address?: string) => {
    const c = await addClientNamespace(segment, { mac, address });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-interop-'));
    script = join(dir, 'udhcpc.sh');
    await writeFile(script, SCRIPT);
    await chmod(script, 0o755);
    segment = await createSegment();
    const s = segment.subnet;
    rawConfig = {
      server: {
        address: segment.serverIp,
        stateDir: join(dir, 'state'),
        dhcp: { mode: 'full', pool: { start: `${s}.100`, end: `${s}.110`, router: segment.serverIp, dns: [segment.serverIp], domain: 'lab.test', leaseSeconds: 600, maxUnknownLeases: 11 } },
      },
      images: { deb: { source: 'docker:debian:12' } },
      machines: { [RESERVED]: { ip: `${s}.20`, hostname: 'node1' } },
      defaults: { unknown: 'boot-default' },
    };
    server = await DhcpChild.start(segment, rawConfig);
  });

  afterAll(async () => {
    await server?.stop();
    for (const c of clients) await c.destroy();
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('a static reservation gets its address, hostname, router, DNS and domain', async () => {
    const lease = await udhcpc(await client(RESERVED), script);
    expect(lease).toMatchObject({
      ip: `${segment.subnet}.20`,
      serverid: segment.serverIp,
      router: segment.serverIp,
      dns: segment.serverIp,
      domain: 'lab.test',
      hostname: 'node1',
      lease: '600',
      subnet: '255.255.255.0',
      bootfile: '',
    });
  });

  it('pool leases survive a restart: another client does not get a leased address', async () => {
    const first = await client('02:00:00:00:0a:02');
    expect((await udhcpc(first, script)).ip).toBe(`${segment.subnet}.100`);
    await server.stop();
    const onDisk = JSON.parse(await readFile(join(dir, 'state', 'leases.json'), 'utf8')) as { leases: { mac: string; ip: string }[] };
    expect(onDisk.leases).toContainEqual(expect.objectContaining({ mac: '02:00:00:00:0a:02', ip: `${segment.subnet}.100` }));
    server = await DhcpChild.start(segment, rawConfig);
    expect((await udhcpc(await client('02:00:00:00:0a:03'), script)).ip).toBe(`${segment.subnet}.101`);
    expect((await udhcpc(first, script)).ip).toBe(`${segment.subnet}.100`);
  });

  it('an address someone else answers ARP for is DECLINEd and the client gets the next one', async () => {
    // A squatter holds .102 without a lease; udhcpc -a probes the offered address with ARP.
    await client('02:00:00:00:0a:99', `${segment.subnet}.102`);
    const lease = await udhcpc(await client('02:00:00:00:0a:04'), script, ['-a', '-A', '1']);
    expect(lease.ip).toBe(`${segment.subnet}.103`);
    expect(server.exchanges).toContainEqual(expect.objectContaining({ mac: '02:00:00:00:0a:04', messageType: 'DECLINE', ignoredReason: 'declined' }));
  });

  it('RELEASE (udhcpc on SIGUSR2) is recorded and the address is the client\'s again next time', async () => {
    const c = await client('02:00:00:00:0a:05');
    // A long-running udhcpc: SIGUSR2 makes it release its lease (-q would exit before it can).
    const running = c.spawn('busybox', ['udhcpc', '-i', c.ifname, '-f', '-t', '5', '-T', '1', '-s', script]);
    const bound = await waitForOutput(running, /BOUND ip=(\S+)/, 20_000);
    expect(bound).toBe(`BOUND ip=${segment.subnet}.104`);
    running.kill('SIGUSR2');
    await server.waitForExchange((e) => e.mac === '02:00:00:00:0a:05' && e.messageType === 'RELEASE' && e.ignoredReason === 'released');
    running.kill('SIGTERM');
    expect((await udhcpc(c, script)).ip).toBe(`${segment.subnet}.104`);
  });

  it("a stranger's RELEASE and DECLINE in a machine's name are ignored: the server's neighbour table puts the address at the machine", async () => {
    const mac = '02:00:00:00:0a:07';
    const victim = await client(mac);
    const running = victim.spawn('busybox', ['udhcpc', '-i', victim.ifname, '-f', '-t', '5', '-T', '1', '-s', script]);
    const stranger = await UdpPeer.start(await client('02:00:00:00:0a:66'), 68);
    try {
      const ip = /BOUND ip=(\S+)/.exec(await waitForOutput(running, /BOUND ip=(\S+)/, 20_000))![1]!;
      // What any traffic between them leaves (a script or layer request): the server's ARP entry for the machine.
      await segment.exec('busybox', ['ping', '-c', '1', '-W', '5', ip]);
      const serverId = ipOption(Opt.SERVER_ID, segment.serverIp);
      await stranger.send([encodeMessage(request(MessageType.RELEASE, mac, [serverId], { ciaddr: ip }))], '255.255.255.255', 67);
      await server.waitForExchange((e) => e.mac === mac && e.messageType === 'RELEASE' && e.ignoredReason === 'release-forged');
      await stranger.send([encodeMessage(request(MessageType.DECLINE, mac, [ipOption(Opt.REQUESTED_IP, ip), serverId]))], '255.255.255.255', 67);
      await server.waitForExchange((e) => e.mac === mac && e.messageType === 'DECLINE' && e.ignoredReason === 'decline-forged');
      // The lease stands: the stranger asking for that address is refused it.
      const xid = 0x3001;
      await stranger.send([encodeMessage({ ...request(MessageType.DISCOVER, '02:00:00:00:0a:66', [ipOption(Opt.REQUESTED_IP, ip)]), xid })], '255.255.255.255', 67);
      const offer = decoded((await stranger.next((r) => r.bytes.readUInt32BE(4) === xid))!);
      expect(offer.yiaddr).not.toBe(ip);
      // The machine's own RELEASE still counts.
      running.kill('SIGUSR2');
      await server.waitForExchange((e) => e.mac === mac && e.messageType === 'RELEASE' && e.ignoredReason === 'released');
    } finally {
      running.kill('SIGTERM');
      await stranger.stop();
    }
  });

  it('a REQUEST naming another server is not ACKed', async () => {
    const c = await client('02:00:00:00:0a:06');
    const peer = await UdpPeer.start(c, 68);
    try {
      const mac = '02:00:00:00:0a:06';
      // RFC 2131: the REQUEST carries the xid of the OFFER it answers.
      const discover = async (xid: number) => {
        await peer.send([encodeMessage({ ...request(MessageType.DISCOVER, mac), xid })], '255.255.255.255', 67);
        return decoded((await peer.next((r) => r.bytes.readUInt32BE(4) === xid))!);
      };
      const ask = (xid: number, ip: string, server: string) =>
        encodeMessage({ ...request(MessageType.REQUEST, mac, [ipOption(Opt.REQUESTED_IP, ip), ipOption(Opt.SERVER_ID, server)]), xid });
      const first = await discover(0x2002);
      await peer.send([ask(0x2002, first.yiaddr, `${segment.subnet}.2`)], '255.255.255.255', 67);
      await server.waitForExchange((e) => e.mac === mac && e.ignoredReason === 'other-server');
      const second = await discover(0x2003);
      await peer.send([ask(0x2003, second.yiaddr, segment.serverIp)], '255.255.255.255', 67);
      const ack = decoded((await peer.next((r) => r.bytes.readUInt32BE(4) === 0x2003 && messageType(decoded(r)) !== MessageType.OFFER))!);
      expect(messageType(ack)).toBe(MessageType.ACK);
      expect(peer.inbox.filter((r) => r.bytes.readUInt32BE(4) === 0x2002).map((r) => messageType(decoded(r)))).toEqual([MessageType.OFFER]);
    } finally {
      await peer.stop();
    }
  });
});

describe('proxy mode beside a lab DHCP server (dnsmasq) on the same segment', () => {
  let segment: Segment;
  let dir: string;
  let script: string;
  let server: DhcpChild;
  const clients: ClientNamespace[] = [];
  const PXE_MAC = '52:54:00:00:d0:02';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-proxy-'));
    script = join(dir, 'udhcpc.sh');
    await writeFile(script, SCRIPT);
    await chmod(script, 0o755);
    segment = await createSegment();
    await startLabDhcp(segment);
    server = await DhcpChild.start(segment, {
      server: { address: segment.serverIp, stateDir: join(dir, 'state') },
      images: { deb: { source: 'docker:debian:12' } },
      machines: { [PXE_MAC]: {} },
    });
  });

  afterAll(async () => {
    await server?.stop();
    for (const c of clients) await c.destroy();
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('a plain client (udhcpc) gets its lease from the lab server; we stay out of it', async () => {
    const c = await addClientNamespace(segment, { mac: '02:00:00:00:0b:01' });
    clients.push(c);
    const lease = await udhcpc(c, script);
    expect(Number(lease.ip!.split('.')[3])).toBeGreaterThanOrEqual(100);
    expect(lease.bootfile).toBe('');
    const ours = server.exchanges.filter((e) => e.mac === '02:00:00:00:0b:01');
    expect(ours.length).toBeGreaterThan(0);
    expect(ours.every((e) => e.replyType === null)).toBe(true);
  });

  it('a PXE client gets an address from the lab server and its boot file from us', async () => {
    const c = await addClientNamespace(segment, { mac: PXE_MAC });
    clients.push(c);
    const peer = await UdpPeer.start(c, 68);
    try {
      const discover = Buffer.from(fixture('ovmf-pxe-discover.bin'));
      discover.writeUInt32BE(0x3001, 4);
      await peer.send([discover], '255.255.255.255', 67);
      const isOffer = (r: Received) => r.bytes.readUInt32BE(4) === 0x3001;
      await peer.next((r) => isOffer(r) && decoded(r).yiaddr !== '0.0.0.0');
      await peer.next((r) => isOffer(r) && decoded(r).yiaddr === '0.0.0.0');
      const offers = peer.inbox.filter(isOffer).map(decoded);
      const lab = offers.find((o) => o.yiaddr !== '0.0.0.0');
      const proxy = offers.find((o) => o.yiaddr === '0.0.0.0');
      expect(lab && Number(lab.yiaddr.split('.')[3])).toBeGreaterThanOrEqual(100);
      expect(lab!.file).toBe('');
      expect(proxy).toMatchObject({ file: 'snponly.efi', siaddr: segment.serverIp });
      expect(offers.filter((o) => messageType(o) === MessageType.OFFER)).toHaveLength(2);
    } finally {
      await peer.stop();
    }
  });
});
