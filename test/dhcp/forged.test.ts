import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MessageType, Opt, decodeMessage, encodeMessage, ipOption, messageType, option, type DhcpMessage } from '../../server/dhcp/codec.ts';
import type { DhcpExchange } from '../../server/dhcp/server.ts';
import { createSegment, stopChild, type Segment } from '../lab/netns.ts';
import { waitForOutput } from '../../server/lab/services.ts';
import { macBytes, request } from './helpers.ts';
import { addClientNamespace, DhcpChild, UdpPeer, type ClientNamespace, type Received } from './lab.ts';

/**
 * Issue 13's full-mode attacks over real sockets: our server in a namespace, the machines
 * (busybox udhcpc) and an attacker (raw DHCP packets from its own namespace, its own MAC on
 * the wire, any MAC it likes in chaddr) on the same bridge. Before RFC 2131 states were
 * enforced, four forged REQUESTs emptied a four-address pool and one moved a victim's lease.
 */

const VICTIM = '02:00:00:00:0d:01';
const REAL = '02:00:00:00:0d:02';
const ATTACKER = '02:00:00:00:0d:66';

const SCRIPT = `#!/bin/sh
case "$1" in
  bound|renew) busybox ip addr replace "$ip/24" dev "$interface"; echo "$1 $ip" ;;
esac
exit 0
`;

function decoded(r: Received): DhcpMessage {
  const d = decodeMessage(r.bytes);
  if (!d.ok) throw new Error(d.error.detail);
  return d.message;
}

/** A request as udhcpc lays it out (client id = 01 + MAC), any MAC in chaddr. */
function forged(type: number, mac: string, xid: number, options: ReturnType<typeof ipOption>[], ciaddr = '0.0.0.0'): Buffer {
  const clientId = option(Opt.CLIENT_ID, Buffer.concat([Buffer.from([1]), macBytes(mac).subarray(0, 6)]));
  return encodeMessage({ ...request(type, mac, [clientId, ...options], { ciaddr }), xid });
}

/** Resolves once `count` exchanges match. */
function exchangesSeen(server: DhcpChild, match: (e: DhcpExchange) => boolean, count: number, timeoutMs = 20_000): Promise<DhcpExchange[]> {
  const all = () => server.exchanges.filter(match);
  return server.waitForExchange(() => all().length >= count, timeoutMs).then(all);
}

describe('full mode: a stranger on the segment cannot take or move leases', () => {
  let segment: Segment;
  let dir: string;
  let script: string;
  let attacker: ClientNamespace;
  let peer: UdpPeer;
  let server: DhcpChild | null = null;
  const machines: ClientNamespace[] = [];
  let s: string;
  let run = 0;

  /** A fresh server (own state dir) on a four-address pool; unknown MACs would be booted (boot-default). */
  const startServer = async () => {
    const stateDir = join(dir, `state${run++}`);
    server = await DhcpChild.start(segment, {
      server: { address: segment.serverIp, stateDir, dhcp: { mode: 'full', pool: { start: `${s}.100`, end: `${s}.103`, leaseSeconds: 600 } } },
      images: { deb: { source: 'docker:debian:12' } },
      machines: { [VICTIM]: {}, [REAL]: {} },
      defaults: { unknown: 'boot-default' },
    });
    return { server, leaseFile: join(stateDir, 'leases.json') };
  };
  const machine = async (mac: string) => {
    const c = await addClientNamespace(segment, { mac });
    machines.push(c);
    return c;
  };
  const udhcpcOnce = async (c: ClientNamespace) => {
    const { stdout } = await c.exec('busybox', ['udhcpc', '-i', c.ifname, '-f', '-q', '-n', '-t', '3', '-T', '1', '-s', script], { timeoutMs: 30_000 });
    return /bound (\S+)/.exec(stdout)?.[1] ?? null;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-forged-'));
    script = join(dir, 'udhcpc.sh');
    await writeFile(script, SCRIPT);
    await chmod(script, 0o755);
    segment = await createSegment();
    s = segment.subnet;
    attacker = await addClientNamespace(segment, { mac: ATTACKER });
    peer = await UdpPeer.start(attacker, 68);
  });

  afterEach(async () => {
    await server?.stop();
    server = null;
    for (const c of machines.splice(0)) await c.destroy();
    peer.inbox.splice(0);
  });

  afterAll(async () => {
    await peer?.stop();
    await attacker?.destroy();
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('four forged REQUESTs from made-up MACs are NAKed and bind nothing: the real machine still gets an address', async () => {
    const { server } = await startServer();
    const macs = [0, 1, 2, 3].map((i) => `02:00:00:00:66:0${i}`);
    await peer.send(
      macs.map((mac, i) => forged(MessageType.REQUEST, mac, 0x6600 + i, [ipOption(Opt.REQUESTED_IP, `${s}.${100 + i}`), ipOption(Opt.SERVER_ID, segment.serverIp)])),
      '255.255.255.255',
      67,
    );
    const seen = await exchangesSeen(server, (e) => macs.includes(e.mac), 4);
    expect(seen.map((e) => [e.replyType, e.ignoredReason])).toEqual(macs.map(() => ['NAK', 'no-matching-offer']));
    expect(peer.inbox.map((r) => messageType(decoded(r)))).not.toContain(MessageType.ACK);
    expect(await udhcpcOnce(await machine(REAL))).toBe(`${s}.100`);
  });

  it('a DISCOVER flood from random MACs does not exhaust the pool for a configured machine', async () => {
    const { server } = await startServer();
    const macs = Array.from({ length: 200 }, (_, i) => `02:00:00:01:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`);
    // In bursts of 25 (a socket buffer's worth, so none is lost), each burst handled before the next.
    for (let at = 0; at < macs.length; at += 25) {
      const burst = macs.slice(at, at + 25);
      await peer.send(burst.map((mac, i) => forged(MessageType.DISCOVER, mac, 0x7700 + at + i, [])), '255.255.255.255', 67);
      await exchangesSeen(server, (e) => burst.includes(e.mac), burst.length);
    }
    const flood = server.exchanges.filter((e) => macs.includes(e.mac));
    expect(flood).toHaveLength(200);
    // Half of the four addresses at most go to unknown MACs.
    expect(flood.filter((e) => e.replyType === 'OFFER')).toHaveLength(2);
    expect(flood.filter((e) => e.ignoredReason === 'unknown-lease-cap').length).toBe(flood.length - 2);
    expect(await udhcpcOnce(await machine(REAL))).toMatch(new RegExp(`^${s.replace(/\./g, '\\.')}\\.10[0-3]$`));
  });

  it('completing DISCOVER/REQUEST for many made-up MACs binds at most maxUnknownLeases; both machines still get addresses', async () => {
    const { server, leaseFile } = await startServer();
    const ackedIps: string[] = [];
    for (let i = 0; i < 6; i++) {
      const mac = `02:00:00:00:67:0${i}`;
      const xid = 0x8800 + i;
      await peer.send([forged(MessageType.DISCOVER, mac, xid, [])], '255.255.255.255', 67);
      const answer = await server.waitForExchange((e) => e.mac === mac && e.messageType === 'DISCOVER');
      if (answer.replyType !== 'OFFER') continue;
      await peer.send([forged(MessageType.REQUEST, mac, xid, [ipOption(Opt.REQUESTED_IP, answer.offered.ip!), ipOption(Opt.SERVER_ID, segment.serverIp)])], '255.255.255.255', 67);
      if ((await server.waitForExchange((e) => e.mac === mac && e.messageType === 'REQUEST')).replyType === 'ACK') ackedIps.push(answer.offered.ip!);
    }
    expect(ackedIps).toHaveLength(2);
    // The two made-up MACs hold two of the four addresses; the machines get the other two.
    const real = await udhcpcOnce(await machine(REAL));
    const victim = await udhcpcOnce(await machine(VICTIM));
    expect([...ackedIps, real, victim].sort()).toEqual([100, 101, 102, 103].map((i) => `${s}.${i}`));
    await server.stop();
    const onDisk = JSON.parse(await readFile(leaseFile, 'utf8')) as { leases: { mac: string; expiresAt: number }[] };
    expect(onDisk.leases.map((l) => l.mac).sort()).toEqual(['02:00:00:00:67:00', '02:00:00:00:67:01', VICTIM, REAL].sort());
  });

  it("forged REQUESTs with the victim's MAC for another address (SELECTING, INIT-REBOOT, REBINDING) do not move its lease", async () => {
    const { server, leaseFile } = await startServer();
    const victim = await machine(VICTIM);
    const udhcpc = victim.spawn('busybox', ['udhcpc', '-i', victim.ifname, '-f', '-t', '3', '-T', '1', '-s', script]);
    let bound = '';
    try {
      bound = (await waitForOutput(udhcpc, /^bound \S+\n/m, 20_000)).trim().split(' ')[1]!;
      const other = bound === `${s}.102` ? `${s}.103` : `${s}.102`;
      const before = server.exchanges.length;
      await peer.send(
        [
          forged(MessageType.REQUEST, VICTIM, 0x9901, [ipOption(Opt.REQUESTED_IP, other), ipOption(Opt.SERVER_ID, segment.serverIp)]),
          forged(MessageType.REQUEST, VICTIM, 0x9902, [ipOption(Opt.REQUESTED_IP, other)]),
          forged(MessageType.REQUEST, VICTIM, 0x9903, [], other),
        ],
        '255.255.255.255',
        67,
      );
      const attacks = (await exchangesSeen(server, (e) => e.mac === VICTIM && server.exchanges.indexOf(e) >= before, 3)).slice(0, 3);
      expect(attacks.map((e) => [e.replyType, e.ignoredReason])).toEqual([
        ['NAK', 'no-matching-offer'],
        ['NAK', 'wrong-address'],
        ['NAK', 'wrong-address'],
      ]);
      for (const xid of [0x9901, 0x9902, 0x9903]) {
        const reply = await peer.next((r) => decoded(r).xid === xid);
        expect(reply && messageType(decoded(reply))).toBe(MessageType.NAK);
      }
      // The victim renews (SIGUSR1) and keeps its address.
      udhcpc.kill('SIGUSR1');
      expect((await waitForOutput(udhcpc, /^renew \S+\n/m, 20_000)).trim()).toBe(`renew ${bound}`);
    } finally {
      await stopChild(udhcpc, 1000);
    }
    await server.stop();
    const onDisk = JSON.parse(await readFile(leaseFile, 'utf8')) as { leases: { mac: string; ip: string }[] };
    expect(onDisk.leases.map((l) => [l.mac, l.ip])).toEqual([[VICTIM, bound]]);
  });
});
