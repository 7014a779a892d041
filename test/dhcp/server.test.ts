import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MessageType, Opt, decodeMessage, encodeMessage, ipOption, messageType, vendorClass, pxeDiscoveryControl, type DhcpMessage } from '../../server/dhcp/codec.ts';
import { createSegment, type Segment } from '../lab/netns.ts';
import { fixture, fuzzPackets, pxeDiscover, request } from './helpers.ts';
import { addClientNamespace, DhcpChild, UdpPeer, type ClientNamespace, type Received } from './lab.ts';

const KNOWN = '52:54:00:00:d0:02';

function decoded(r: Received | null): DhcpMessage {
  expect(r).not.toBeNull();
  const d = decodeMessage(r!.bytes);
  if (!d.ok) throw new Error(d.error.detail);
  return d.message;
}

const withXid = (bytes: Buffer, xid: number) => {
  const copy = Buffer.from(bytes);
  copy.writeUInt32BE(xid, 4);
  return copy;
};
const xidOf = (r: Received) => r.bytes.length >= 8 && r.bytes.readUInt32BE(4);

/**
 * The server loop for real: run-standalone.ts inside a namespace, packets from a client
 * namespace on the other end of a veth pair.
 */
describe('DHCP server in a network namespace (proxy mode)', () => {
  let segment: Segment;
  let client: ClientNamespace;
  let server: DhcpChild;
  let peer: UdpPeer;

  beforeAll(async () => {
    segment = await createSegment();
    client = await addClientNamespace(segment, { mac: KNOWN });
    server = await DhcpChild.start(segment, {
      // A unicast bind address must not deafen the server to broadcasts (it warns and uses 0.0.0.0).
      server: { address: segment.serverIp, bind: segment.serverIp, httpPort: 8080 },
      images: { deb: { source: 'docker:debian:12' } },
      machines: { [KNOWN]: {} },
      defaults: { unknown: 'deny' },
    });
    peer = await UdpPeer.start(client, 68);
  });

  afterAll(async () => {
    await peer?.stop();
    await server?.stop();
    await client?.destroy();
    await segment?.destroy();
  });

  it('answers the golden OVMF PXE DISCOVER with a proxy OFFER (no address, boot file, PXEClient)', async () => {
    await peer.send([withXid(fixture('ovmf-pxe-discover.bin'), 0x1001)], '255.255.255.255', 67);
    const offer = decoded(await peer.next((r) => xidOf(r) === 0x1001));
    expect(messageType(offer)).toBe(MessageType.OFFER);
    expect(offer.yiaddr).toBe('0.0.0.0');
    expect(offer.siaddr).toBe(segment.serverIp);
    expect(offer.file).toBe('snponly.efi');
    expect(vendorClass(offer)).toBe('PXEClient');
    expect(pxeDiscoveryControl(offer)).toBe(8);
    expect(await server.waitForExchange((e) => e.mac === KNOWN && e.replyType === 'OFFER')).toMatchObject({ arch: 7, mode: 'proxy' });
    // The log line of the exchange (pino JSON on the child's stderr) carries mac, arch, mode, phase.
    const line = await server.waitForLog((l) => l.mac === KNOWN && l.reply === 'OFFER');
    expect(line).toMatchObject({ phase: 'dhcp', mac: KNOWN, arch: 7, mode: 'proxy', bootfile: 'snponly.efi' });
  });

  it('answers a REQUEST on 4011 directly to the requester address and port', async () => {
    await client.exec('ip', ['addr', 'add', `${segment.subnet}.150/24`, 'dev', 'eth0']);
    const req = pxeDiscover(KNOWN, 7);
    req.options[0] = { code: Opt.MESSAGE_TYPE, data: Buffer.from([MessageType.REQUEST]) };
    req.ciaddr = `${segment.subnet}.150`;
    req.xid = 0x1002;
    await peer.send([encodeMessage(req)], segment.serverIp, 4011);
    const received = await peer.next((r) => xidOf(r) === 0x1002);
    const ack = decoded(received);
    expect(messageType(ack)).toBe(MessageType.ACK);
    expect(received!.port).toBe(4011);
    expect(received!.from).toBe(segment.serverIp);
    expect(ack.file).toBe('snponly.efi');
  });

  it('deny policy: an unknown MAC gets no answer, a known one right after does', async () => {
    const unknown = encodeMessage({ ...pxeDiscover('52:54:00:00:ee:01', 7), xid: 0x1003 });
    const known = encodeMessage({ ...pxeDiscover(KNOWN, 7), xid: 0x1004 });
    await peer.send([unknown], '255.255.255.255', 67);
    await server.waitForExchange((e) => e.mac === '52:54:00:00:ee:01' && e.ignoredReason === 'unknown-mac-deny');
    await peer.send([known], '255.255.255.255', 67);
    // Replies go out in order: once the later one is in, the earlier one is never coming.
    expect(await peer.next((r) => xidOf(r) === 0x1004)).not.toBeNull();
    expect(peer.inbox.filter((r) => xidOf(r) === 0x1003)).toEqual([]);
  });

  it('survives thousands of random and mutated packets, then still answers a valid DISCOVER', async () => {
    const seeds = ['ovmf-pxe-discover.bin', 'ovmf-http-discover.bin', 'ipxe-bios-discover.bin'].map(fixture);
    seeds.push(encodeMessage(request(MessageType.REQUEST, KNOWN, [ipOption(Opt.SERVER_ID, segment.serverIp), ipOption(Opt.REQUESTED_IP, '1.2.3.4')])));
    const packets = fuzzPackets(seeds, 3000, 0xdeadbeef);
    await peer.send(packets, segment.serverIp, 67);
    await peer.send(packets.slice(0, 1000), segment.serverIp, 4011);
    await peer.send([withXid(fixture('ovmf-pxe-discover.bin'), 0x1005)], '255.255.255.255', 67);
    const offer = decoded(await peer.next((r) => xidOf(r) === 0x1005, 20_000));
    expect(offer.file).toBe('snponly.efi');
    expect(server.alive).toBe(true);
    expect(server.errorLogs).toEqual([]);
    // The flood did reach the server: malformed packets were seen and dropped.
    expect(server.stderr).toMatch(/malformed DHCP packet dropped/);
  });
});

describe('config reload applies to the next packet', () => {
  let segment: Segment;
  let client: ClientNamespace;
  let server: DhcpChild;
  let peer: UdpPeer;
  let dir: string;
  const raw = (unknown: string) => ({
    server: { address: segment.serverIp },
    images: { deb: { source: 'docker:debian:12' } },
    defaults: { unknown },
  });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-reload-'));
    segment = await createSegment();
    client = await addClientNamespace(segment);
    server = await DhcpChild.start(segment, raw('deny'), join(dir, 'config.json'));
    peer = await UdpPeer.start(client, 68);
  });

  afterAll(async () => {
    await peer?.stop();
    await server?.stop();
    await client?.destroy();
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('an unknown MAC denied before the reload is answered after it', async () => {
    const mac = '52:54:00:00:ee:02';
    await peer.send([encodeMessage({ ...pxeDiscover(mac, 0), xid: 0x4001 })], '255.255.255.255', 67);
    await server.waitForExchange((e) => e.mac === mac && e.ignoredReason === 'unknown-mac-deny');
    await server.reload(join(dir, 'config.json'), raw('boot-default'));
    await peer.send([encodeMessage({ ...pxeDiscover(mac, 0), xid: 0x4002 })], '255.255.255.255', 67);
    const offer = decoded(await peer.next((r) => xidOf(r) === 0x4002));
    expect(offer.file).toBe('undionly.kpxe');
    expect(peer.inbox.filter((r) => xidOf(r) === 0x4001)).toEqual([]);
  });
});
