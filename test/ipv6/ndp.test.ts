import { describe, expect, it } from 'vitest';
import { advertisesSomething, buildRouterAdvertisement, checksum, icmpv6Type, ipv6Bytes, ipv6Text, linkLocalFromMac, parseRouterSolicitation } from '../../server/ipv6/ndp.ts';
import { SolicitationPolicy } from '../../server/ipv6/solicitation-policy.ts';
import { servingInterface } from '../../server/ipv6/responder.ts';

const CLIENT_MAC = '52:54:00:0a:58:32';
const SERVER_MAC = '02:11:22:33:44:55';
const CLIENT_LL = linkLocalFromMac(CLIENT_MAC);
const SERVER_LL = ipv6Bytes('fe80::11:22ff:fe33:4455')!;

/**
 * The Router Solicitation iPXE sends (src/net/ndp.c ndp_tx_router_solicitation): to ff02::2
 * from its link-local address, with its link-layer address option. Written out byte by byte
 * so the parser is checked against the wire format, not against our own builder.
 */
function ipxeRouterSolicitation(overrides: { hopLimit?: number; source?: Buffer; code?: number; options?: Buffer } = {}): Buffer {
  const source = overrides.source ?? CLIENT_LL;
  const options = overrides.options ?? Buffer.from([1, 1, 0x52, 0x54, 0x00, 0x0a, 0x58, 0x32]);
  const icmp = Buffer.concat([Buffer.from([133, overrides.code ?? 0, 0, 0, 0, 0, 0, 0]), options]);
  const destination = ipv6Bytes('ff02::2')!;
  icmp.writeUInt16BE(checksum(source, destination, icmp), 2);
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(icmp.length, 4);
  ip[6] = 58;
  ip[7] = overrides.hopLimit ?? 255;
  source.copy(ip, 8);
  destination.copy(ip, 24);
  const eth = Buffer.from('333300000002525400' + '0a5832' + '86dd', 'hex');
  return Buffer.concat([eth, ip, icmp]);
}

describe('router solicitation parser', () => {
  it("accepts iPXE's solicitation and names its MAC and link-local source", () => {
    const parsed = parseRouterSolicitation(ipxeRouterSolicitation());
    expect(parsed).toEqual({ ok: true, rs: { mac: CLIENT_MAC, source: CLIENT_LL } });
    expect(ipv6Text(CLIENT_LL)).toBe('fe80::5054:ff:fe0a:5832');
  });

  it('accepts one from :: without options (a host before its link-local is ready)', () => {
    expect(parseRouterSolicitation(ipxeRouterSolicitation({ source: Buffer.alloc(16), options: Buffer.alloc(0) }))).toMatchObject({ ok: true });
  });

  it('refuses what RFC 4861 6.1.1 says to drop, with the reason', () => {
    const cases: [Buffer, RegExp][] = [
      [ipxeRouterSolicitation({ hopLimit: 64 }), /hop limit 64/],
      [ipxeRouterSolicitation({ code: 1 }), /code 1/],
      [ipxeRouterSolicitation({ options: Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]) }), /malformed option/],
      [ipxeRouterSolicitation({ options: Buffer.from([1, 2, 0, 0, 0, 0, 0, 0]) }), /malformed option/],
      [ipxeRouterSolicitation({ source: Buffer.alloc(16) }), /unspecified/],
      [ipxeRouterSolicitation().subarray(0, 60), /too short/],
    ];
    for (const [frame, reason] of cases) {
      const parsed = parseRouterSolicitation(frame);
      expect(parsed.ok).toBe(false);
      if (!parsed.ok) expect(parsed.reason).toMatch(reason);
    }
    const corrupt = ipxeRouterSolicitation();
    corrupt[corrupt.length - 1]! ^= 0xff;
    expect(parseRouterSolicitation(corrupt)).toEqual({ ok: false, reason: 'bad ICMPv6 checksum' });
    const ipv4 = ipxeRouterSolicitation();
    ipv4.writeUInt16BE(0x0800, 12);
    expect(parseRouterSolicitation(ipv4)).toEqual({ ok: false, reason: 'not IPv6' });
  });

  it('never throws on arbitrary bytes', () => {
    const base = ipxeRouterSolicitation();
    const threw: number[] = [];
    for (let i = 0; i < 2000; i++) {
      // Deterministic mutations: every byte position, several values, and every truncation.
      const frame = Buffer.from(base.subarray(0, i < base.length ? base.length : i % base.length));
      if (i < base.length) frame[i] = (i * 37) & 0xff;
      try {
        parseRouterSolicitation(frame);
        advertisesSomething(frame);
        icmpv6Type(frame);
      } catch {
        threw.push(i);
      }
    }
    expect(threw).toEqual([]);
  });
});

describe('router advertisement builder', () => {
  const rs = { mac: CLIENT_MAC, source: CLIENT_LL };
  const ra = buildRouterAdvertisement({ serverMac: SERVER_MAC, serverLinkLocal: SERVER_LL, to: rs });

  it('is unicast to the machine: its MAC and its link-local address, from ours, hop limit 255', () => {
    expect(ra.subarray(0, 6).toString('hex')).toBe('5254000a5832');
    expect(ra.subarray(6, 12).toString('hex')).toBe('021122334455');
    expect(ra.readUInt16BE(12)).toBe(0x86dd);
    expect(ra[14 + 7]).toBe(255);
    expect(ipv6Text(ra.subarray(22, 38))).toBe('fe80::11:22ff:fe33:4455');
    expect(ipv6Text(ra.subarray(38, 54))).toBe('fe80::5054:ff:fe0a:5832');
  });

  it('advertises nothing: lifetime 0, M/O clear, no prefix, only the source link-layer option; checksum valid', () => {
    const icmp = ra.subarray(54);
    expect(icmp.length).toBe(24);
    expect(icmp.toString('hex')).toBe(
      '86' + '00' + icmp.subarray(2, 4).toString('hex') + '00' + '00' + '0000' + '00000000' + '00000000' + '0101' + '021122334455',
    );
    expect(checksum(ra.subarray(22, 38), ra.subarray(38, 54), icmp)).toBe(0);
    expect(advertisesSomething(ra)).toBe(false);
    expect(icmpv6Type(ra)).toBe(134);
  });

  it('answers a solicitation from :: at ff02::1, still only to the MAC', () => {
    const toUnspecified = buildRouterAdvertisement({ serverMac: SERVER_MAC, serverLinkLocal: SERVER_LL, to: { mac: CLIENT_MAC, source: Buffer.alloc(16) } });
    expect(toUnspecified.subarray(0, 6).toString('hex')).toBe('5254000a5832');
    expect(ipv6Text(toUnspecified.subarray(38, 54))).toBe('ff02::1');
  });

  it("tells a real router's RA (lifetime, M/O, prefix) from one like ours", () => {
    const withLifetime = Buffer.from(ra);
    withLifetime.writeUInt16BE(1800, 54 + 6);
    expect(advertisesSomething(withLifetime)).toBe(true);
    const managed = Buffer.from(ra);
    managed[54 + 5] = 0x80;
    expect(advertisesSomething(managed)).toBe(true);
    const prefix = Buffer.concat([ra, Buffer.from([3, 4, 64, 0xc0, ...Array<number>(28).fill(0)])]);
    prefix.writeUInt16BE(24 + 32, 14 + 4);
    expect(advertisesSomething(prefix)).toBe(true);
    expect(advertisesSomething(ipxeRouterSolicitation())).toBeNull();
  });
});

describe('addresses', () => {
  it('parses and prints IPv6 text', () => {
    expect(ipv6Bytes('fe80::1%br0')!.toString('hex')).toBe('fe800000000000000000000000000001');
    expect(ipv6Bytes('::')!.toString('hex')).toBe('0'.repeat(32));
    expect(ipv6Bytes('1:2:3:4:5:6:7:8')!.toString('hex')).toBe('00010002000300040005000600070008');
    for (const bad of ['1::2::3', '1:2:3', 'fe80::zz', '10.0.0.1']) expect(ipv6Bytes(bad)).toBeNull();
    expect(ipv6Text(ipv6Bytes('ff02::2')!)).toBe('ff02::2');
  });

  it('finds the interface holding server.address, its MAC and link-local (EUI-64 when it has none)', () => {
    const v4 = (address: string, mac: string) => ({ family: 'IPv4' as const, address, mac, netmask: '255.255.255.0', internal: false, cidr: null });
    const v6 = (address: string, mac: string) => ({ family: 'IPv6' as const, address, mac, netmask: 'ffff:ffff:ffff:ffff::', internal: false, cidr: null, scopeid: 3 });
    const interfaces = {
      lo: [v4('127.0.0.1', '00:00:00:00:00:00')],
      eth0: [v4('192.168.1.5', '02:00:00:00:00:01'), v6('fe80::1', '02:00:00:00:00:01')],
      br0: [v4('10.88.50.1', SERVER_MAC)],
    };
    expect(servingInterface('192.168.1.5', interfaces)).toEqual({ name: 'eth0', mac: '02:00:00:00:00:01', linkLocal: ipv6Bytes('fe80::1') });
    expect(servingInterface('10.88.50.1', interfaces)).toEqual({ name: 'br0', mac: SERVER_MAC, linkLocal: SERVER_LL });
    expect(servingInterface('127.0.0.1', interfaces)).toBeNull();
    expect(servingInterface('10.9.9.9', interfaces)).toBeNull();
  });
});

describe('which solicitations are answered', () => {
  const options = { windowMs: 1000, maxAnswersPerWindow: 3, maxMachines: 2, routerMemoryMs: 5000 };

  it('only machines netboot is booting, inside their window, a bounded number of times', () => {
    const policy = new SolicitationPolicy(options);
    expect(policy.decide('aa', 0)).toEqual({ answer: false, reason: 'not-booting' });
    policy.bootStarted('aa', 100);
    expect([1, 2, 3, 4].map((t) => policy.decide('aa', 100 + t).answer)).toEqual([true, true, true, false]);
    expect(policy.decide('aa', 200)).toEqual({ answer: false, reason: 'answer-limit' });
    policy.bootStarted('aa', 500); // a new DHCP (iPXE after firmware PXE) opens a new window
    expect(policy.decide('aa', 600)).toEqual({ answer: true });
    expect(policy.decide('aa', 1500)).toEqual({ answer: false, reason: 'window-over' });
    expect(policy.decide('aa', 1501)).toEqual({ answer: false, reason: 'not-booting' });
  });

  it('holds at most maxMachines windows, dropping the oldest', () => {
    const policy = new SolicitationPolicy(options);
    for (const [i, mac] of ['a', 'b', 'c'].entries()) policy.bootStarted(mac, i);
    expect(policy.size).toBe(2);
    expect(policy.decide('a', 3)).toEqual({ answer: false, reason: 'not-booting' });
    expect(policy.decide('c', 3)).toEqual({ answer: true });
  });

  it('stands aside while a real router has been heard, and answers again once it has been quiet long enough', () => {
    const policy = new SolicitationPolicy({ ...options, windowMs: 100_000 });
    policy.bootStarted('aa', 0);
    policy.routerHeard(10);
    expect(policy.decide('aa', 20)).toEqual({ answer: false, reason: 'router-present' });
    expect(policy.decide('aa', 5010)).toEqual({ answer: true });
  });
});
