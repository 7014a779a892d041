import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MessageType, Opt, decodeMessage, encodeMessage, ipOption, messageType, option, requestedIp, serverId } from '../../server/dhcp/codec.ts';
import { createSegment, stopChild, type Segment } from '../lab/netns.ts';
import { waitForOutput } from '../../server/lab/services.ts';
import { decodeFixture, macBytes } from './helpers.ts';
import { addClientNamespace, DhcpChild, UdpPeer, type ClientNamespace } from './lab.ts';

/**
 * One busybox udhcpc through every RFC 2131 client state against our full-mode server:
 * INIT -> SELECTING -> BOUND, RENEWING (SIGUSR1, unicast), REBINDING (the unicast renewal
 * dropped by a firewall rule in the client's namespace, so udhcpc broadcasts it), RELEASE
 * (SIGUSR2), then INIT-REBOOT. udhcpc has no INIT-REBOOT state (`-r IP` asks for the address
 * in its DISCOVER), so INIT-REBOOT is sent from the same namespace as dhclient would send it:
 * udhcpc's own REQUEST without the server id. (dhclient is not installed on this host.)
 */

const MAC = '02:00:00:00:0e:01';
const OTHER = '02:00:00:00:0e:02';

const SCRIPT = `#!/bin/sh
case "$1" in
  deconfig) busybox ip addr flush dev "$interface" ;;
  bound|renew) busybox ip addr replace "$ip/24" dev "$interface"; echo "$1 $ip lease=$lease" ;;
esac
exit 0
`;

describe('busybox udhcpc through the RFC 2131 states', () => {
  let segment: Segment;
  let dir: string;
  let script: string;
  let server: DhcpChild;
  let client: ClientNamespace;
  let s: string;
  let address = '';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-udhcpc-states-'));
    script = join(dir, 'udhcpc.sh');
    await writeFile(script, SCRIPT);
    await chmod(script, 0o755);
    segment = await createSegment();
    s = segment.subnet;
    server = await DhcpChild.start(segment, {
      server: { address: segment.serverIp, stateDir: join(dir, 'state'), dhcp: { mode: 'full', pool: { start: `${s}.100`, end: `${s}.110`, leaseSeconds: 600 } } },
      images: { deb: { source: 'docker:debian:12' } },
      machines: { [MAC]: {}, [OTHER]: {} },
      defaults: { unknown: 'deny' },
    });
    client = await addClientNamespace(segment, { mac: MAC });
  });

  afterAll(async () => {
    await server?.stop();
    await client?.destroy();
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  const line = async (child: ReturnType<ClientNamespace['spawn']>, event: 'bound' | 'renew') =>
    (await waitForOutput(child, new RegExp(`^${event} \\S+ lease=\\d+\\n`, 'm'), 20_000)).trim().split(' ');
  const requests = () => server.exchanges.filter((e) => e.mac === MAC && e.messageType === 'REQUEST');

  it('obtains, renews (unicast), rebinds (broadcast) and releases its lease', async () => {
    const udhcpc = client.spawn('busybox', ['udhcpc', '-i', client.ifname, '-f', '-t', '3', '-T', '1', '-s', script]);
    try {
      const [, ip, lease] = await line(udhcpc, 'bound');
      address = ip!;
      expect(lease).toBe('lease=600');
      expect(server.exchanges.filter((e) => e.mac === MAC).map((e) => [e.messageType, e.replyType])).toEqual([
        ['DISCOVER', 'OFFER'],
        ['REQUEST', 'ACK'],
      ]);

      udhcpc.kill('SIGUSR1');
      expect((await line(udhcpc, 'renew'))[1]).toBe(address);
      expect(requests().at(-1)).toMatchObject({ replyType: 'ACK', offered: { ip: address } });

      // REBINDING: the server cannot be reached by unicast any more; udhcpc broadcasts.
      const rule = ['OUTPUT', '-p', 'udp', '-d', segment.serverIp, '--dport', '67', '-j', 'DROP'];
      await client.exec('iptables', ['-A', ...rule]);
      try {
        const before = requests().length;
        udhcpc.kill('SIGUSR1');
        expect((await line(udhcpc, 'renew'))[1]).toBe(address);
        expect(requests().length).toBe(before + 1);
        const { stdout } = await client.exec('iptables', ['-v', '-x', '-n', '-L', 'OUTPUT']);
        const dropped = Number(/^\s*(\d+)\s+\d+\s+DROP/m.exec(stdout)?.[1]);
        expect(dropped).toBeGreaterThan(0); // the unicast renewal was tried first
      } finally {
        await client.exec('iptables', ['-D', ...rule]);
      }

      udhcpc.kill('SIGUSR2');
      await server.waitForExchange((e) => e.mac === MAC && e.messageType === 'RELEASE');
      expect(server.exchanges.filter((e) => e.mac === MAC && e.messageType === 'RELEASE')).toEqual([expect.objectContaining({ ignoredReason: 'released' })]);
    } finally {
      await stopChild(udhcpc, 1000);
    }
  });

  it('INIT-REBOOT: its previous address is ACKed, another one NAKed; a MAC without a lease gets silence', async () => {
    // Back to no address, as a rebooting client starts (removing the last address drops the device's routes: put back the broadcast one).
    await client.exec('ip', ['addr', 'flush', 'dev', client.ifname]);
    await client.exec('ip', ['route', 'replace', '255.255.255.255/32', 'dev', client.ifname]);
    const peer = await UdpPeer.start(client, 68);
    try {
      const selecting = decodeFixture('udhcpc-request-selecting.bin');
      const initReboot = (ip: string, xid: number, mac = MAC) => {
        const options = selecting.options.filter((o) => o.code !== Opt.SERVER_ID && o.code !== Opt.REQUESTED_IP && o.code !== Opt.CLIENT_ID);
        options.push(ipOption(Opt.REQUESTED_IP, ip), option(Opt.CLIENT_ID, Buffer.concat([Buffer.from([1]), macBytes(mac).subarray(0, 6)])));
        return encodeMessage({ ...selecting, chaddr: macBytes(mac), xid, options });
      };
      const other = address === `${s}.105` ? `${s}.106` : `${s}.105`;
      await peer.send([initReboot(address, 0xa001), initReboot(other, 0xa002), initReboot(address, 0xa003, OTHER)], '255.255.255.255', 67);
      const reply = async (xid: number) => {
        const r = await peer.next((m) => m.bytes.readUInt32BE(4) === xid);
        const d = r && decodeMessage(r.bytes);
        return d && d.ok ? d.message : null;
      };
      const ack = await reply(0xa001);
      expect(ack && messageType(ack)).toBe(MessageType.ACK);
      expect(ack!.yiaddr).toBe(address);
      const nak = await reply(0xa002);
      expect(nak && messageType(nak)).toBe(MessageType.NAK);
      await server.waitForExchange((e) => e.mac === OTHER);
      expect(server.exchanges.filter((e) => e.mac === OTHER)).toEqual([expect.objectContaining({ replyType: null, ignoredReason: 'no-record' })]);
      expect(serverId(ack!)).toBe(segment.serverIp);
      expect(requestedIp(ack!)).toBeUndefined();
    } finally {
      await peer.stop();
    }
  });

  it('udhcpc -r: asks for its previous address in the DISCOVER and gets it; asking for a leased one gets another', async () => {
    const { stdout } = await client.exec('busybox', ['udhcpc', '-i', client.ifname, '-f', '-q', '-n', '-t', '3', '-T', '1', '-r', address, '-s', script], { timeoutMs: 30_000 });
    expect(/^bound (\S+)/m.exec(stdout)?.[1]).toBe(address);
    const second = await addClientNamespace(segment, { mac: OTHER });
    try {
      const out = await second.exec('busybox', ['udhcpc', '-i', second.ifname, '-f', '-q', '-n', '-t', '3', '-T', '1', '-r', address, '-s', script], { timeoutMs: 30_000 });
      const got = /^bound (\S+)/m.exec(out.stdout)?.[1];
      expect(got).toMatch(/\.1[01]\d$/);
      expect(got).not.toBe(address);
    } finally {
      await second.destroy();
    }
    await server.stop();
    const onDisk = JSON.parse(await readFile(join(dir, 'state', 'leases.json'), 'utf8')) as { leases: { mac: string; ip: string }[] };
    expect(onDisk.leases.find((l) => l.mac === MAC)?.ip).toBe(address);
  });
});
