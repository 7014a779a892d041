import { describe, expect, it } from 'vitest';
import {
  MessageType,
  Opt,
  decodeMessage,
  encodeMessage,
  ipOption,
  leaseTime,
  messageType,
  option,
  requestedIp,
  serverId,
  type DhcpMessage,
  type DhcpOption,
} from '../../server/dhcp/codec.ts';
import { LeaseStore } from '../../server/dhcp/leases.ts';
import { respond, type Outcome, type RequestContext } from '../../server/dhcp/responder.ts';
import { decodeFixture, macBytes, makeConfig } from './helpers.ts';

/**
 * RFC 2131 4.3.2: what a REQUEST may get, by the client state it reveals, with the packets
 * busybox udhcpc 1.35 really sends (test/dhcp/fixtures/udhcpc-*.bin, recorded by
 * capture-udhcpc.ts) and OVMF's PXE DISCOVER. udhcpc keeps one xid from DISCOVER through
 * renewals; it has no INIT-REBOOT state (`-r` puts option 50 in its DISCOVER), so INIT-REBOOT
 * is its SELECTING REQUEST without the server id, as dhclient sends it.
 */

const fixture = {
  discover: decodeFixture('udhcpc-discover.bin'),
  selecting: decodeFixture('udhcpc-request-selecting.bin'),
  renewing: decodeFixture('udhcpc-request-renewing.bin'),
  release: decodeFixture('udhcpc-release.bin'),
  pxe: decodeFixture('ovmf-pxe-discover.bin'),
};
const SERVER = serverId(fixture.selecting)!;
const S = SERVER.split('.').slice(0, 3).join('.');
const FIRST = requestedIp(fixture.selecting)!; // what udhcpc was offered: the pool's first address
const UDHCPC_MAC = '02:00:00:00:0c:01';
const PXE_MAC = '52:54:00:00:d0:02';
const RESERVED_MAC = '52:54:00:00:aa:01';

const raw = (extra: { defaults?: Record<string, unknown>; pool?: Record<string, unknown> } = {}) => ({
  server: { address: SERVER, httpPort: 8080, dhcp: { mode: 'full', pool: { start: FIRST, end: `${S}.110`, leaseSeconds: 600, ...extra.pool } } },
  machines: { [UDHCPC_MAC]: {}, [PXE_MAC]: {}, [RESERVED_MAC]: { ip: `${S}.20` } },
  defaults: { unknown: 'boot-default', ...extra.defaults },
});

/** A copy of a request, edited as a different client or state would send it. */
function edit(message: DhcpMessage, change: { mac?: string; xid?: number; ciaddr?: string; type?: number; drop?: number[]; add?: DhcpOption[] }): DhcpMessage {
  const drop = new Set(change.drop ?? []);
  if (change.mac) drop.add(Opt.CLIENT_ID);
  for (const o of change.add ?? []) drop.add(o.code);
  let options = message.options.filter((o) => !drop.has(o.code));
  if (change.type !== undefined) options = options.map((o) => (o.code === Opt.MESSAGE_TYPE ? option(Opt.MESSAGE_TYPE, [change.type!]) : o));
  if (change.mac) options.push(option(Opt.CLIENT_ID, Buffer.concat([Buffer.from([1]), macBytes(change.mac).subarray(0, 6)])));
  options.push(...(change.add ?? []));
  return {
    ...message,
    chaddr: change.mac ? macBytes(change.mac) : Buffer.from(message.chaddr),
    xid: change.xid ?? message.xid,
    ciaddr: change.ciaddr ?? message.ciaddr,
    options,
  };
}

const initReboot = (ip: string, mac = UDHCPC_MAC) => edit(fixture.selecting, { mac, drop: [Opt.SERVER_ID], add: [ipOption(Opt.REQUESTED_IP, ip)] });
const renewing = (ciaddr: string, mac = UDHCPC_MAC) => edit(fixture.renewing, { mac, ciaddr });
const selecting = (ip: string, mac = UDHCPC_MAC, xid = fixture.selecting.xid) => edit(fixture.selecting, { mac, xid, add: [ipOption(Opt.REQUESTED_IP, ip)] });

function wire(outcome: Outcome): DhcpMessage {
  expect(outcome.reply, JSON.stringify(outcome.exchange)).not.toBeNull();
  const decoded = decodeMessage(encodeMessage(outcome.reply!.message));
  if (!decoded.ok) throw new Error(decoded.error.detail);
  return decoded.message;
}
const typeOf = (outcome: Outcome) => (outcome.reply ? messageType(wire(outcome)) : null);

async function setup(config = makeConfig(raw())) {
  let clock = 1_000_000;
  const leases = await LeaseStore.open(null, { now: () => clock });
  const handle = (msg: DhcpMessage, from = { address: '0.0.0.0', port: 68 }, neighbour?: RequestContext['neighbour']) =>
    respond(msg, { config, port: 67, from, leases, ...(neighbour ? { neighbour } : {}) } satisfies RequestContext);
  const advance = (ms: number) => (clock += ms);
  /** DISCOVER + SELECTING as udhcpc does: bound to the first pool address. */
  const bindUdhcpc = () => {
    expect(typeOf(handle(fixture.discover))).toBe(MessageType.OFFER);
    expect(typeOf(handle(fixture.selecting))).toBe(MessageType.ACK);
  };
  return { leases, handle, advance, bindUdhcpc, now: () => clock };
}

describe('SELECTING (server id and option 50): only the offer we made, to that MAC, in that transaction', () => {
  it('udhcpc DISCOVER -> OFFER, its REQUEST -> ACK with the lease', async () => {
    const { handle, leases } = await setup();
    const offer = wire(handle(fixture.discover));
    expect(offer.yiaddr).toBe(FIRST);
    expect(leases.active(UDHCPC_MAC)).toBeUndefined(); // an offer is not a lease
    const ack = handle(fixture.selecting);
    expect(typeOf(ack)).toBe(MessageType.ACK);
    expect(wire(ack).yiaddr).toBe(FIRST);
    expect(leaseTime(wire(ack))).toBe(600);
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
  });

  it('without an OFFER before it: NAK, and nothing is bound', async () => {
    const { handle, leases } = await setup();
    const nak = handle(fixture.selecting);
    expect(typeOf(nak)).toBe(MessageType.NAK);
    expect(nak.exchange).toMatchObject({ replyType: 'NAK', ignoredReason: 'no-matching-offer' });
    expect(nak.exchange!.detail).toMatch(/no offer/);
    expect(leases.list()).toEqual([]);
  });

  it('with another transaction id than the offer: NAK; the offer stays for the right one', async () => {
    const { handle, leases } = await setup();
    handle(fixture.discover);
    const other = handle(selecting(FIRST, UDHCPC_MAC, fixture.selecting.xid ^ 1));
    expect(typeOf(other)).toBe(MessageType.NAK);
    expect(other.exchange!.detail).toMatch(/xid/);
    expect(leases.active(UDHCPC_MAC)).toBeUndefined();
    expect(typeOf(handle(fixture.selecting))).toBe(MessageType.ACK);
  });

  it('for another address than the one offered: NAK, nothing bound', async () => {
    const { handle, leases } = await setup();
    handle(fixture.discover);
    const other = handle(selecting(`${S}.105`));
    expect(typeOf(other)).toBe(MessageType.NAK);
    expect(other.exchange!.detail).toMatch(new RegExp(`offered ${FIRST.replace(/\./g, '\\.')}, not`));
    expect(leases.list()).toEqual([]);
  });

  it("another MAC cannot take a client's offer, even with its xid and address", async () => {
    const { handle, leases } = await setup();
    handle(fixture.discover);
    expect(typeOf(handle(selecting(FIRST, '02:00:00:00:66:01')))).toBe(MessageType.NAK);
    expect(leases.holder(FIRST)).toBe(UDHCPC_MAC);
    expect(typeOf(handle(fixture.selecting))).toBe(MessageType.ACK);
  });

  it('naming another server: silence, and our offer of that transaction is dropped', async () => {
    const { handle, leases } = await setup();
    handle(fixture.discover);
    const other = handle(edit(fixture.selecting, { add: [ipOption(Opt.SERVER_ID, `${S}.2`)] }));
    expect(other).toMatchObject({ reply: null, exchange: { ignoredReason: 'other-server' } });
    expect(leases.offerTo(UDHCPC_MAC)).toBeUndefined();
  });

  it('after the offer ran out (60 s): NAK, the client starts over', async () => {
    const { handle, advance } = await setup();
    handle(fixture.discover);
    advance(60_001);
    expect(typeOf(handle(fixture.selecting))).toBe(MessageType.NAK);
  });

  it('OVMF PXE: DISCOVER -> OFFER with the boot file; its REQUEST in the same transaction -> ACK; another xid -> NAK', async () => {
    const { handle, leases } = await setup();
    const offer = wire(handle(fixture.pxe));
    expect(offer.file).toBe('snponly.efi');
    const request = (xid: number) => edit(fixture.pxe, { type: MessageType.REQUEST, xid, add: [ipOption(Opt.REQUESTED_IP, offer.yiaddr), ipOption(Opt.SERVER_ID, SERVER)] });
    expect(typeOf(handle(request(fixture.pxe.xid + 1)))).toBe(MessageType.NAK);
    const ack = wire(handle(request(fixture.pxe.xid)));
    expect(messageType(ack)).toBe(MessageType.ACK);
    expect(ack.file).toBe('snponly.efi');
    expect(leases.active(PXE_MAC)?.ip).toBe(offer.yiaddr);
  });
});

describe('INIT-REBOOT (option 50, no server id, no ciaddr): only the address bound to that MAC', () => {
  it('its own address -> ACK (lease extended)', async () => {
    const { handle, leases, bindUdhcpc, advance, now } = await setup();
    bindUdhcpc();
    advance(500_000);
    const ack = handle(initReboot(FIRST));
    expect(wire(ack).yiaddr).toBe(FIRST);
    expect(leases.active(UDHCPC_MAC)?.expiresAt).toBe(now() + 600_000);
  });

  it('its old address after the lease expired, when nobody took it -> ACK', async () => {
    const { handle, bindUdhcpc, advance } = await setup();
    bindUdhcpc();
    advance(700_000);
    expect(typeOf(handle(initReboot(FIRST)))).toBe(MessageType.ACK);
  });

  it('another address -> NAK (broadcast), the lease stays where it was', async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    const nak = handle(initReboot(`${S}.105`));
    expect(typeOf(nak)).toBe(MessageType.NAK);
    expect(nak.exchange).toMatchObject({ ignoredReason: 'wrong-address' });
    expect(nak.reply!.to).toEqual({ address: '255.255.255.255', port: 68 });
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
    expect(leases.holder(`${S}.105`)).toBeUndefined();
  });

  it('an address on another network (the client moved) -> NAK', async () => {
    const { handle, bindUdhcpc } = await setup();
    bindUdhcpc();
    expect(handle(initReboot('192.168.99.7'))).toMatchObject({ exchange: { replyType: 'NAK', ignoredReason: 'wrong-network' } });
  });

  it('a MAC we have no record of -> silence (RFC 2131 4.3.2), nothing bound', async () => {
    const { handle, leases } = await setup();
    expect(handle(initReboot(FIRST))).toMatchObject({ reply: null, exchange: { ignoredReason: 'no-record' } });
    expect(handle(initReboot(FIRST, '02:00:00:00:66:02'))).toMatchObject({ reply: null, exchange: { ignoredReason: 'no-record' } });
    expect(leases.list()).toEqual([]);
  });

  it('a reservation is the record: its address -> ACK, another -> NAK', async () => {
    const { handle } = await setup();
    expect(wire(handle(initReboot(`${S}.20`, RESERVED_MAC))).yiaddr).toBe(`${S}.20`);
    expect(typeOf(handle(initReboot(FIRST, RESERVED_MAC)))).toBe(MessageType.NAK);
  });
});

describe('RENEWING (unicast) / REBINDING (broadcast): ciaddr, no server id; only the lease bound to that MAC at ciaddr', () => {
  it('udhcpc renewing (SIGUSR1) -> ACK unicast to ciaddr, lease extended', async () => {
    const { handle, leases, bindUdhcpc, advance, now } = await setup();
    bindUdhcpc();
    advance(300_000);
    const ack = handle(fixture.renewing, { address: FIRST, port: 68 });
    expect(wire(ack).yiaddr).toBe(FIRST);
    expect(ack.reply!.to).toEqual({ address: FIRST, port: 68 });
    expect(leases.active(UDHCPC_MAC)?.expiresAt).toBe(now() + 600_000);
  });

  it('rebinding (the same packet broadcast, past T2) -> ACK', async () => {
    const { handle, bindUdhcpc, advance } = await setup();
    bindUdhcpc();
    advance(530_000);
    expect(typeOf(handle(fixture.renewing, { address: FIRST, port: 68 }))).toBe(MessageType.ACK);
  });

  it('a ciaddr that is not its lease -> NAK (broadcast), lease unchanged', async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    const nak = handle(renewing(`${S}.105`), { address: `${S}.105`, port: 68 });
    expect(nak).toMatchObject({ exchange: { replyType: 'NAK', ignoredReason: 'wrong-address' } });
    expect(nak.reply!.to).toEqual({ address: '255.255.255.255', port: 68 });
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
  });

  it('a MAC we have no record of -> silence', async () => {
    const { handle, leases } = await setup();
    expect(handle(renewing(`${S}.105`, '02:00:00:00:66:03'))).toMatchObject({ reply: null, exchange: { ignoredReason: 'no-record' } });
    expect(leases.list()).toEqual([]);
  });

  it('after its address went to another client (lease expired): no record of it any more -> silence', async () => {
    const small = makeConfig(raw({ pool: { end: FIRST } }));
    const { handle, leases, bindUdhcpc, advance } = await setup(small);
    bindUdhcpc();
    advance(700_000);
    const other = edit(fixture.discover, { mac: PXE_MAC });
    expect(wire(handle(other)).yiaddr).toBe(FIRST);
    expect(typeOf(handle(edit(fixture.selecting, { mac: PXE_MAC })))).toBe(MessageType.ACK);
    expect(handle(fixture.renewing, { address: FIRST, port: 68 })).toMatchObject({ reply: null, exchange: { ignoredReason: 'no-record' } });
    expect(leases.active(PXE_MAC)?.ip).toBe(FIRST);
  });
});

describe('DECLINE and RELEASE touch only the sender MAC\'s own address', () => {
  const decline = (ip: string, mac = UDHCPC_MAC, withServerId = true) =>
    edit(fixture.selecting, { mac, type: MessageType.DECLINE, drop: [Opt.PARAMETER_LIST, 57 /* maximum message size */, Opt.VENDOR_CLASS, ...(withServerId ? [] : [Opt.SERVER_ID])], add: [ipOption(Opt.REQUESTED_IP, ip)] });

  it('DECLINE of its own address: out of the pool for 600 s, the client gets another', async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    expect(handle(decline(FIRST))).toMatchObject({ reply: null, exchange: { ignoredReason: 'declined' } });
    expect(leases.isDeclined(FIRST)).toBe(true);
    expect(wire(handle(fixture.discover)).yiaddr).not.toBe(FIRST);
  });

  it("DECLINE of someone else's address, or without our server id: ignored, the lease stays", async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    expect(handle(decline(FIRST, '02:00:00:00:66:04'))).toMatchObject({ reply: null, exchange: { ignoredReason: 'decline-unknown' } });
    expect(handle(decline(FIRST, UDHCPC_MAC, false))).toMatchObject({ reply: null, exchange: { ignoredReason: 'decline-not-ours' } });
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
    expect(leases.isDeclined(FIRST)).toBe(false);
  });

  it('udhcpc RELEASE (SIGUSR2): the lease ends; the same client gets the address again', async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    expect(handle(fixture.release, { address: FIRST, port: 68 })).toMatchObject({ reply: null, exchange: { ignoredReason: 'released' } });
    expect(leases.active(UDHCPC_MAC)).toBeUndefined();
    expect(wire(handle(fixture.discover)).yiaddr).toBe(FIRST);
  });

  it("RELEASE of someone else's address: ignored, the lease stays", async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    expect(handle(edit(fixture.release, { mac: '02:00:00:00:66:05' }), { address: FIRST, port: 68 })).toMatchObject({ reply: null, exchange: { ignoredReason: 'release-unknown' } });
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
  });

  it('a RELEASE that does not come from the address it gives back (a broadcast, another host): forged, the lease stays', async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    expect(handle(fixture.release)).toMatchObject({ reply: null, exchange: { ignoredReason: 'release-forged' } });
    expect(handle(fixture.release, { address: '10.0.0.66', port: 68 })).toMatchObject({ reply: null, exchange: { ignoredReason: 'release-forged' } });
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
  });

  it("a RELEASE in the client's name while the neighbour table puts its address at another MAC: forged, the lease stays", async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    const stranger = '02:00:00:00:66:06';
    expect(handle(fixture.release, { address: FIRST, port: 68 }, { ip: FIRST, mac: stranger })).toMatchObject({ reply: null, exchange: { ignoredReason: 'release-forged' } });
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
    // An entry for another address says nothing about this one; the client's own entry (or none) lets it release.
    expect(handle(fixture.release, { address: FIRST, port: 68 }, { ip: '10.0.0.99', mac: stranger })).toMatchObject({ exchange: { ignoredReason: 'released' } });
    bindUdhcpc();
    expect(handle(fixture.release, { address: FIRST, port: 68 }, { ip: FIRST, mac: UDHCPC_MAC })).toMatchObject({ exchange: { ignoredReason: 'released' } });
    bindUdhcpc();
    expect(handle(fixture.release, { address: FIRST, port: 68 }, { ip: FIRST, mac: undefined })).toMatchObject({ exchange: { ignoredReason: 'released' } });
    expect(leases.active(UDHCPC_MAC)).toBeUndefined();
  });

  it('a DECLINE in the name of the MAC the neighbour table puts at that address: forged (it would decline itself), the lease stays', async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    expect(handle(decline(FIRST), undefined, { ip: FIRST, mac: UDHCPC_MAC })).toMatchObject({ reply: null, exchange: { ignoredReason: 'decline-forged' } });
    expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
    expect(leases.isDeclined(FIRST)).toBe(false);
    // Someone else at the address is what a real DECLINE reports.
    expect(handle(decline(FIRST), undefined, { ip: FIRST, mac: '02:00:00:00:66:07' })).toMatchObject({ exchange: { ignoredReason: 'declined' } });
    expect(leases.isDeclined(FIRST)).toBe(true);
  });
});

describe('the attacks of issue 13, as packets', () => {
  it('forged SELECTING REQUESTs from made-up MACs bind nothing: the pool stays free for the real client', async () => {
    const tiny = makeConfig(raw({ pool: { end: `${S}.103` } }));
    const { handle, leases } = await setup(tiny);
    for (let i = 0; i < 4; i++) {
      const forged = handle(selecting(`${S}.${100 + i}`, `02:00:00:00:66:1${i}`, 0x1000 + i));
      expect(forged.exchange).toMatchObject({ replyType: 'NAK', ignoredReason: 'no-matching-offer' });
    }
    expect(leases.list()).toEqual([]);
    expect(wire(handle(fixture.discover)).yiaddr).toBe(FIRST);
  });

  it("a forged REQUEST with the victim's MAC for another address does not move its lease, in any state", async () => {
    const { handle, leases, bindUdhcpc } = await setup();
    bindUdhcpc();
    const other = `${S}.107`;
    for (const forged of [selecting(other, UDHCPC_MAC, 0x5555), selecting(other), initReboot(other), renewing(other)]) {
      expect(typeOf(handle(forged))).toBe(MessageType.NAK);
      expect(leases.active(UDHCPC_MAC)?.ip).toBe(FIRST);
    }
    expect(leases.holder(other)).toBeUndefined();
  });
});

describe('leases only for MACs the boot policy serves, bounded for unknown ones', () => {
  const unknownMac = (i: number) => `02:00:00:01:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;

  for (const unknown of ['local', 'deny'] as const) {
    it(`defaults.unknown ${unknown}: an unknown MAC gets no offer and no lease, in any state`, async () => {
      const { handle, leases } = await setup(makeConfig(raw({ defaults: { unknown } })));
      const mac = unknownMac(1);
      expect(handle(edit(fixture.discover, { mac }))).toMatchObject({ reply: null, exchange: { ignoredReason: `unknown-mac-${unknown}` } });
      expect(handle(selecting(FIRST, mac)).reply).toBeNull();
      expect(handle(initReboot(FIRST, mac)).reply).toBeNull();
      expect(handle(renewing(FIRST, mac)).reply).toBeNull();
      expect(leases.list()).toEqual([]);
      expect(leases.offers()).toEqual([]);
      // /init's udhcpc on a configured machine (plain DHCP, no PXE class) still gets its lease.
      expect(wire(handle(fixture.discover)).yiaddr).toBe(FIRST);
      expect(typeOf(handle(fixture.selecting))).toBe(MessageType.ACK);
    });
  }

  for (const unknown of ['boot-default', 'menu'] as const) {
    it(`defaults.unknown ${unknown}: an unknown plain client gets a short lease (unknownLeaseSeconds)`, async () => {
      const { handle } = await setup(makeConfig(raw({ defaults: { unknown } })));
      const mac = unknownMac(2);
      const offer = wire(handle(edit(fixture.discover, { mac })));
      expect(leaseTime(offer)).toBe(300);
      const ack = wire(handle(edit(fixture.selecting, { mac, add: [ipOption(Opt.REQUESTED_IP, offer.yiaddr)] })));
      expect(messageType(ack)).toBe(MessageType.ACK);
      expect(leaseTime(ack)).toBe(300);
      expect(leaseTime(wire(handle(fixture.discover)))).toBe(600);
    });
  }

  it('a DISCOVER flood from 2000 random MACs holds at most the cap; known machines still get offers', async () => {
    const { handle, leases } = await setup();
    const refused: Record<string, number> = {};
    let offered = 0;
    for (let i = 0; i < 2000; i++) {
      const out = handle(edit(fixture.discover, { mac: unknownMac(i), xid: i }));
      if (out.reply) offered++;
      else refused[out.exchange!.ignoredReason!] = (refused[out.exchange!.ignoredReason!] ?? 0) + 1;
    }
    // 11 addresses: unknown MACs may hold 5 (half the pool).
    expect(offered).toBe(5);
    expect(refused).toEqual({ 'unknown-lease-cap': 1995 });
    expect(leases.offers()).toHaveLength(5);
    expect(typeOf(handle(fixture.discover))).toBe(MessageType.OFFER);
    expect(typeOf(handle(fixture.pxe))).toBe(MessageType.OFFER);
    expect(leases.offers()).toHaveLength(7);
  });

  it('maxUnknownLeases as configured; a pool full of offers to unknown MACs still serves a known machine', async () => {
    const { handle, leases } = await setup(makeConfig(raw({ pool: { end: `${S}.103`, maxUnknownLeases: 4 } })));
    for (let i = 0; i < 4; i++) expect(typeOf(handle(edit(fixture.discover, { mac: unknownMac(i), xid: i })))).toBe(MessageType.OFFER);
    expect(handle(edit(fixture.discover, { mac: unknownMac(9) }))).toMatchObject({ reply: null, exchange: { ignoredReason: 'unknown-lease-cap' } });
    // The known machine takes back the oldest unknown offer.
    expect(wire(handle(fixture.discover)).yiaddr).toBe(FIRST);
    expect(leases.offerTo(unknownMac(0))).toBeUndefined();
    expect(typeOf(handle(fixture.selecting))).toBe(MessageType.ACK);
    // maxUnknownLeases 0: unknown MACs get nothing at all.
    const none = await setup(makeConfig(raw({ pool: { maxUnknownLeases: 0 } })));
    expect(none.handle(edit(fixture.discover, { mac: unknownMac(1) }))).toMatchObject({ reply: null, exchange: { ignoredReason: 'unknown-lease-cap' } });
  });
});
