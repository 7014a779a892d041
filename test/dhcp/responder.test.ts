import { describe, expect, it } from 'vitest';
import {
  MessageType,
  Opt,
  bootfileName,
  decodeMessage,
  encodeMessage,
  getOption,
  encodeSubOptions,
  ipOption,
  ipxeOptions,
  option,
  leaseTime,
  messageType,
  pxeDiscoveryControl,
  serverId,
  textOption,
  vendorClass,
  type DhcpMessage,
} from '../../server/dhcp/codec.ts';
import { LeaseStore } from '../../server/dhcp/leases.ts';
import { respond, type Outcome, type RequestContext } from '../../server/dhcp/responder.ts';
import { decodeFixture, makeConfig, pxeDiscover, request } from './helpers.ts';

const server = { address: '10.9.0.1', httpPort: 8080 };
const PXE_MAC = '52:54:00:00:d0:02';
const fromClient = { address: '0.0.0.0', port: 68 };

/** The reply as the client would see it: encoded, then decoded. */
function wire(outcome: Outcome): DhcpMessage {
  expect(outcome.reply).not.toBeNull();
  const decoded = decodeMessage(encodeMessage(outcome.reply!.message));
  if (!decoded.ok) throw new Error(decoded.error.detail);
  return decoded.message;
}

describe('proxy mode', () => {
  const config = makeConfig({ server, machines: { [PXE_MAC]: {}, '52:54:00:00:d0:03': {}, '52:54:00:00:d0:01': {} } });
  const ctx = (port = 67, from = fromClient): RequestContext => ({ config, port, from, leases: null });

  it('offers OVMF PXE its boot file without an address: PXEClient, discovery control 8, UUID echoed, broadcast', () => {
    const discover = decodeFixture('ovmf-pxe-discover.bin');
    const outcome = respond(discover, ctx());
    const offer = wire(outcome);
    expect(messageType(offer)).toBe(MessageType.OFFER);
    expect(offer.xid).toBe(discover.xid);
    expect(offer.yiaddr).toBe('0.0.0.0');
    expect(offer.siaddr).toBe('10.9.0.1');
    expect(offer.file).toBe('snponly.efi');
    expect(bootfileName(offer)).toBe('snponly.efi');
    expect(serverId(offer)).toBe('10.9.0.1');
    expect(vendorClass(offer)).toBe('PXEClient');
    expect(pxeDiscoveryControl(offer)).toBe(8);
    expect(getOption(offer, Opt.CLIENT_UUID)).toEqual(getOption(discover, Opt.CLIENT_UUID));
    expect(leaseTime(offer)).toBeUndefined();
    expect(outcome.reply!.to).toEqual({ address: '255.255.255.255', port: 68 });
    expect(outcome.exchange).toMatchObject({ mac: PXE_MAC, arch: 7, mode: 'proxy', messageType: 'DISCOVER', replyType: 'OFFER', offered: { bootfile: 'snponly.efi' } });
    expect(outcome.exchange!.offered.ip).toBeUndefined();
  });

  it('offers OVMF HTTP Boot the URL and echoes HTTPClient', () => {
    const offer = wire(respond(decodeFixture('ovmf-http-discover.bin'), ctx()));
    expect(vendorClass(offer)).toBe('HTTPClient');
    expect(offer.file).toBe('http://10.9.0.1:8080/ipxe/snponly.efi');
    expect(getOption(offer, Opt.VENDOR)).toBeUndefined();
  });

  it('offers the iPXE ROM the HTTP script', () => {
    const offer = wire(respond(decodeFixture('ipxe-bios-discover.bin'), ctx()));
    expect(offer.file).toBe('http://10.9.0.1:8080/boot.ipxe');
    expect(offer.yiaddr).toBe('0.0.0.0');
  });

  it('on 4011 answers a REQUEST with an ACK straight back to the sender', () => {
    const req = request(MessageType.REQUEST, PXE_MAC, [textOption(Opt.VENDOR_CLASS, 'PXEClient:Arch:00007:UNDI:003000'), ...pxeDiscover(PXE_MAC).options.slice(1)], {
      ciaddr: '10.9.0.150',
    });
    const outcome = respond(req, ctx(4011, { address: '10.9.0.150', port: 4011 }));
    const ack = wire(outcome);
    expect(messageType(ack)).toBe(MessageType.ACK);
    expect(ack.file).toBe('snponly.efi');
    expect(ack.yiaddr).toBe('0.0.0.0');
    expect(outcome.reply!.to).toEqual({ address: '10.9.0.150', port: 4011 });
  });

  it('stays silent for REQUESTs meant for the lab server, plain clients, and unknown MACs under deny', () => {
    // Even one naming our address: the lab's DHCP server may share it (same host).
    for (const server of ['10.9.0.2', '10.9.0.1']) {
      const toLab = request(MessageType.REQUEST, PXE_MAC, [ipOption(Opt.REQUESTED_IP, '10.9.0.150'), ipOption(Opt.SERVER_ID, server), textOption(Opt.VENDOR_CLASS, 'PXEClient')]);
      expect(respond(toLab, ctx())).toMatchObject({ reply: null, exchange: { ignoredReason: 'for-address-server' } });
    }
    const plain = request(MessageType.DISCOVER, PXE_MAC, [textOption(Opt.VENDOR_CLASS, 'udhcp 1.35.0')]);
    expect(respond(plain, ctx()).reply).toBeNull();
    const deny = makeConfig({ server, machines: {}, defaults: { unknown: 'deny' } });
    expect(respond(decodeFixture('ovmf-pxe-discover.bin'), { ...ctx(), config: deny })).toMatchObject({
      reply: null,
      exchange: { ignoredReason: 'unknown-mac-deny' },
    });
    const local = makeConfig({ server, machines: {}, defaults: { unknown: 'local' } });
    expect(respond(decodeFixture('ovmf-pxe-discover.bin'), { ...ctx(), config: local }).reply).toBeNull();
  });

  it('answers arm64 UEFI PXE with the arm64 iPXE', () => {
    const arm = pxeDiscover(PXE_MAC, 11);
    expect(respond(arm, ctx())).toMatchObject({ exchange: { arch: 11, offered: { bootfile: 'ipxe-arm64.efi' } } });
  });

  it('answers nothing at all in mode off, and ignores BOOTREPLYs', () => {
    const off = makeConfig({ server: { ...server, dhcp: { mode: 'off' } }, machines: { [PXE_MAC]: {} } });
    expect(respond(pxeDiscover(PXE_MAC), { ...ctx(), config: off })).toEqual({ reply: null, exchange: null });
    expect(respond({ ...pxeDiscover(PXE_MAC), op: 2 }, ctx())).toEqual({ reply: null, exchange: null });
  });
});

describe('full mode', () => {
  const RESERVED_MAC = '52:54:00:00:aa:01';
  const raw = {
    server: {
      ...server,
      dhcp: { mode: 'full', pool: { start: '10.9.0.100', end: '10.9.0.102', router: '10.9.0.254', dns: ['10.9.0.53'], domain: 'lab.test', leaseSeconds: 600, maxUnknownLeases: 10 } },
    },
    machines: { [RESERVED_MAC]: { ip: '10.9.0.20', hostname: 'node1' }, [PXE_MAC]: {} },
  };
  const config = makeConfig(raw);
  let clock = 1_000_000;
  const setup = async () => {
    const leases = await LeaseStore.open(null, { now: () => clock });
    return (msg: DhcpMessage, extra: Partial<RequestContext> = {}) => respond(msg, { config, port: 67, from: fromClient, leases, ...extra });
  };
  const plain = (type: number, mac: string, options = [] as ReturnType<typeof ipOption>[], header: Partial<DhcpMessage> = {}) =>
    request(type, mac, [textOption(Opt.VENDOR_CLASS, 'udhcp 1.35.0'), ...options], header);

  it('DISCOVER -> OFFER from the pool with router, DNS, domain, netmask, lease time; REQUEST -> ACK', async () => {
    const handle = await setup();
    const offer = wire(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:01')));
    expect(messageType(offer)).toBe(MessageType.OFFER);
    expect(offer.yiaddr).toBe('10.9.0.100');
    // A MAC not in the config: the short unknownLeaseSeconds (default 300), not leaseSeconds.
    expect(leaseTime(offer)).toBe(300);
    expect(getOption(offer, Opt.ROUTER)).toEqual(Buffer.from([10, 9, 0, 254]));
    expect(getOption(offer, Opt.DNS)).toEqual(Buffer.from([10, 9, 0, 53]));
    expect(getOption(offer, Opt.DOMAIN)?.toString()).toBe('lab.test');
    expect(getOption(offer, Opt.SUBNET_MASK)).toEqual(Buffer.from([255, 255, 255, 0]));
    expect(offer.file).toBe('');
    // A second client is not offered the held address.
    expect(wire(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:02'))).yiaddr).toBe('10.9.0.101');
    const ack = handle(plain(MessageType.REQUEST, '02:00:00:00:00:01', [ipOption(Opt.REQUESTED_IP, '10.9.0.100'), ipOption(Opt.SERVER_ID, '10.9.0.1')]));
    expect(messageType(wire(ack))).toBe(MessageType.ACK);
    expect(wire(ack).yiaddr).toBe('10.9.0.100');
    expect(ack.exchange).toMatchObject({ mode: 'full', replyType: 'ACK', offered: { ip: '10.9.0.100' } });
  });

  it('a static reservation gives the reserved address and hostname; asking for another one is NAKed', async () => {
    const handle = await setup();
    const offer = wire(handle(plain(MessageType.DISCOVER, RESERVED_MAC)));
    expect(offer.yiaddr).toBe('10.9.0.20');
    expect(getOption(offer, Opt.HOSTNAME)?.toString()).toBe('node1');
    const nak = handle(plain(MessageType.REQUEST, RESERVED_MAC, [ipOption(Opt.REQUESTED_IP, '10.9.0.100')]));
    expect(messageType(wire(nak))).toBe(MessageType.NAK);
    expect(nak.reply!.to).toEqual({ address: '255.255.255.255', port: 68 });
  });

  it('a REQUEST naming another server is not ACKed and frees the offer', async () => {
    const handle = await setup();
    wire(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:03')));
    const other = handle(plain(MessageType.REQUEST, '02:00:00:00:00:03', [ipOption(Opt.REQUESTED_IP, '10.9.0.100'), ipOption(Opt.SERVER_ID, '10.9.0.2')]));
    expect(other).toMatchObject({ reply: null, exchange: { ignoredReason: 'other-server' } });
    expect(wire(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:04'))).yiaddr).toBe('10.9.0.100');
  });

  it('PXE and iPXE clients get boot files; iPXE also gets 175.176=1 (no ProxyDHCP wait)', async () => {
    const handle = await setup();
    const pxe = wire(handle(decodeFixture('ovmf-pxe-discover.bin')));
    expect(pxe.yiaddr).toBe('10.9.0.100');
    expect(pxe.file).toBe('snponly.efi');
    expect(vendorClass(pxe)).toBe('PXEClient');
    expect(ipxeOptions(pxe)).toBeUndefined();
    const ipxe = wire(handle(decodeFixture('ipxe-bios-discover.bin'), {
      config: makeConfig({ ...raw, machines: { ...raw.machines, '52:54:00:00:d0:01': {} } }),
    }));
    expect(ipxe.file).toBe('http://10.9.0.1:8080/boot.ipxe');
    expect(ipxeOptions(ipxe)).toEqual([{ code: 176, data: Buffer.from([1]) }]);
  });

  it('replies through a relay to giaddr:67, to ciaddr:68 when renewing, broadcast otherwise', async () => {
    const handle = await setup();
    const agent = option(Opt.RELAY_AGENT, encodeSubOptions([option(1, [0, 4, 0, 1]), option(2, [9, 9])]));
    const clientIdentifier = option(Opt.CLIENT_ID, [1, 2, 0, 0, 0, 0, 5]);
    const relayed = handle(plain(MessageType.DISCOVER, '02:00:00:00:00:05', [clientIdentifier, agent], { giaddr: '10.9.0.250', hops: 1 }));
    expect(relayed.reply!.to).toEqual({ address: '10.9.0.250', port: 67 });
    const relayedOffer = wire(relayed);
    expect(relayedOffer.giaddr).toBe('10.9.0.250');
    // Relay agent information (RFC 3046) and the client identifier (RFC 6842) are echoed, 82 last.
    expect(relayedOffer.options.at(-1)).toEqual(agent);
    expect(getOption(relayedOffer, Opt.CLIENT_ID)).toEqual(clientIdentifier.data);
    // A relay on another network is not served from this network's pool.
    expect(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:05', [], { giaddr: '10.10.0.1', hops: 1 }))).toMatchObject({
      reply: null,
      exchange: { ignoredReason: 'relay-other-subnet' },
    });
    handle(plain(MessageType.REQUEST, '02:00:00:00:00:05', [ipOption(Opt.REQUESTED_IP, '10.9.0.100'), ipOption(Opt.SERVER_ID, '10.9.0.1')]));
    const renew = handle(plain(MessageType.REQUEST, '02:00:00:00:00:05', [], { ciaddr: '10.9.0.100' }));
    expect(messageType(wire(renew))).toBe(MessageType.ACK);
    expect(renew.reply!.to).toEqual({ address: '10.9.0.100', port: 68 });
    const broadcastFlag = handle(plain(MessageType.DISCOVER, '02:00:00:00:00:06', [], { flags: 0x8000 }));
    expect(broadcastFlag.reply!.to).toEqual({ address: '255.255.255.255', port: 68 });
    expect(wire(broadcastFlag).flags).toBe(0x8000);
  });

  it('INIT-REBOOT from a client we have no record of is left alone (RFC 2131 4.3.2)', async () => {
    const handle = await setup();
    const reboot = handle(plain(MessageType.REQUEST, '02:00:00:00:00:07', [ipOption(Opt.REQUESTED_IP, '10.9.0.101')]));
    expect(reboot).toMatchObject({ reply: null, exchange: { ignoredReason: 'no-record' } });
  });

  it('DECLINE keeps the address out of the pool; RELEASE gives it back to the same client next time', async () => {
    const handle = await setup();
    const mac = '02:00:00:00:00:08';
    wire(handle(plain(MessageType.DISCOVER, mac)));
    handle(plain(MessageType.REQUEST, mac, [ipOption(Opt.REQUESTED_IP, '10.9.0.100'), ipOption(Opt.SERVER_ID, '10.9.0.1')]));
    const decline = handle(plain(MessageType.DECLINE, mac, [ipOption(Opt.REQUESTED_IP, '10.9.0.100'), ipOption(Opt.SERVER_ID, '10.9.0.1')]));
    expect(decline).toMatchObject({ reply: null, exchange: { ignoredReason: 'declined' } });
    expect(wire(handle(plain(MessageType.DISCOVER, mac))).yiaddr).toBe('10.9.0.101');
    expect(wire(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:09'))).yiaddr).toBe('10.9.0.102');

    handle(plain(MessageType.REQUEST, mac, [ipOption(Opt.REQUESTED_IP, '10.9.0.101'), ipOption(Opt.SERVER_ID, '10.9.0.1')]));
    const release = handle(plain(MessageType.RELEASE, mac, [ipOption(Opt.SERVER_ID, '10.9.0.1')], { ciaddr: '10.9.0.101' }), { from: { address: '10.9.0.101', port: 68 } });
    expect(release).toMatchObject({ reply: null, exchange: { ignoredReason: 'released' } });
    // Released and nothing else free (100 declined, 102 offered): a new client gets the released one...
    expect(wire(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:0a'))).yiaddr).toBe('10.9.0.101');
    // ...and then the pool is exhausted.
    expect(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:0b'))).toMatchObject({ reply: null, exchange: { ignoredReason: 'pool-exhausted' } });
    // The decline hold ends.
    clock += 601_000;
    expect(wire(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:0b'))).yiaddr).toBe('10.9.0.100');
  });

  it('INFORM gets configuration without an address or lease time, unicast to ciaddr', async () => {
    const handle = await setup();
    const inform = handle(plain(MessageType.INFORM, '02:00:00:00:00:0c', [], { ciaddr: '10.9.0.77' }));
    const ack = wire(inform);
    expect(messageType(ack)).toBe(MessageType.ACK);
    expect(ack.yiaddr).toBe('0.0.0.0');
    expect(leaseTime(ack)).toBeUndefined();
    expect([...getOption(ack, Opt.ROUTER)!]).toEqual([10, 9, 0, 254]);
    expect(inform.reply!.to).toEqual({ address: '10.9.0.77', port: 68 });
  });

  it('under deny, unknown MACs get nothing, even plain DHCP clients', async () => {
    const deny = makeConfig({ ...raw, defaults: { unknown: 'deny' } });
    const handle = await setup();
    expect(handle(plain(MessageType.DISCOVER, '02:00:00:00:00:0d'), { config: deny }).reply).toBeNull();
    expect(wire(handle(plain(MessageType.DISCOVER, RESERVED_MAC), { config: deny })).yiaddr).toBe('10.9.0.20');
  });
});
