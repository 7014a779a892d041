/**
 * The two IPv6 Neighbor Discovery messages netboot handles (RFC 4861), as whole Ethernet
 * frames: Router Solicitations in (parsed and checked), Router Advertisements out. Pure: bytes
 * in, bytes out; the frame I/O is server/ipv6/ra-io.ts.
 */

const ETHERTYPE_IPV6 = 0x86dd;
const NEXT_HEADER_ICMPV6 = 58;
const ICMPV6_ROUTER_SOLICITATION = 133;
const ICMPV6_ROUTER_ADVERTISEMENT = 134;
const OPTION_SOURCE_LINK_LAYER = 1;
const ETH = 14;
const IP6 = 40;

export interface RouterSolicitation {
  /** The Ethernet source: the machine, canonical aa:bb:cc:dd:ee:ff. */
  mac: string;
  /** The IPv6 source (16 bytes): its link-local address, or :: before it has one. */
  source: Buffer;
}

export type ParseResult = { ok: true; rs: RouterSolicitation } | { ok: false; reason: string };

/**
 * A Router Solicitation frame, validated as RFC 4861 6.1.1 asks (hop limit 255, code 0,
 * ICMPv6 length >= 8, well-formed options, no source link-layer option from ::) plus a correct
 * checksum; anything else is refused with a reason.
 */
export function parseRouterSolicitation(frame: Buffer): ParseResult {
  const no = (reason: string): ParseResult => ({ ok: false, reason });
  if (frame.length < ETH + IP6 + 8) return no(`frame of ${frame.length} bytes is too short for a router solicitation`);
  if (frame.readUInt16BE(12) !== ETHERTYPE_IPV6) return no('not IPv6');
  const ip = frame.subarray(ETH);
  if (ip[0]! >> 4 !== 6) return no('IP version is not 6');
  if (ip[6] !== NEXT_HEADER_ICMPV6) return no('next header is not ICMPv6');
  if (ip[7] !== 255) return no(`hop limit ${ip[7]} (must be 255: the sender is on this link)`);
  const payloadLength = ip.readUInt16BE(4);
  if (payloadLength < 8 || IP6 + payloadLength > ip.length) return no(`ICMPv6 length ${payloadLength} does not fit the frame`);
  const icmp = ip.subarray(IP6, IP6 + payloadLength);
  if (icmp[0] !== ICMPV6_ROUTER_SOLICITATION) return no(`ICMPv6 type ${icmp[0]} is not a router solicitation`);
  if (icmp[1] !== 0) return no(`ICMPv6 code ${icmp[1]}`);
  const source = Buffer.from(ip.subarray(8, 24));
  const destination = ip.subarray(24, 40);
  if (checksum(source, destination, icmp) !== 0) return no('bad ICMPv6 checksum');
  const unspecified = source.every((b) => b === 0);
  for (let at = 8; at < icmp.length; ) {
    if (icmp.length - at < 2 || icmp[at + 1] === 0 || at + icmp[at + 1]! * 8 > icmp.length) return no('malformed option');
    if (unspecified && icmp[at] === OPTION_SOURCE_LINK_LAYER) return no('source link-layer option from the unspecified address');
    at += icmp[at + 1]! * 8;
  }
  return { ok: true, rs: { mac: macText(frame.subarray(6, 12)), source } };
}

/**
 * Whether a Router Advertisement someone else sent makes hosts do something: a default router
 * (lifetime > 0), DHCPv6 (M or O) or a prefix (option 3). An RA like ours (none of these) does
 * not; null when the frame is not a well-formed RA.
 */
export function advertisesSomething(frame: Buffer): boolean | null {
  if (frame.length < ETH + IP6 + 16 || frame.readUInt16BE(12) !== ETHERTYPE_IPV6) return null;
  const ip = frame.subarray(ETH);
  const icmp = ip.subarray(IP6, IP6 + ip.readUInt16BE(4));
  if (ip[6] !== NEXT_HEADER_ICMPV6 || icmp.length < 16 || icmp[0] !== ICMPV6_ROUTER_ADVERTISEMENT) return null;
  if (icmp.readUInt16BE(6) > 0 || (icmp[5]! & 0xc0) !== 0) return true;
  for (let at = 16; at + 2 <= icmp.length && icmp[at + 1]! > 0; at += icmp[at + 1]! * 8) {
    if (icmp[at] === 3) return true;
  }
  return false;
}

/** The ICMPv6 type of an IPv6 frame without extension headers, else null. */
export function icmpv6Type(frame: Buffer): number | null {
  return frame.length > ETH + IP6 && frame.readUInt16BE(12) === ETHERTYPE_IPV6 && frame[ETH + 6] === NEXT_HEADER_ICMPV6 ? frame[ETH + IP6]! : null;
}

export interface AdvertisementAddresses {
  /** This server's MAC on the interface (Ethernet source and the RA's link-layer option). */
  serverMac: string;
  /** This server's link-local address on the interface (16 bytes): routers speak from link-local. */
  serverLinkLocal: Buffer;
  /** The solicitation being answered. */
  to: RouterSolicitation;
}

/**
 * A Router Advertisement that advertises nothing: cur hop limit 0 (unspecified), M and O clear
 * (no DHCPv6), router lifetime 0 (not a default router), reachable time and retrans timer 0
 * (unspecified), no prefix, MTU or DNS option; only the source link-layer address. A host that
 * takes it gains no route and no address (RFC 4861 6.3.4); iPXE takes it as "autoconfiguration
 * done" and stops waiting. Sent to the soliciting machine only: its MAC, and its link-local
 * address (ff02::1 if it solicited from ::, still only to its MAC).
 */
export function buildRouterAdvertisement({ serverMac, serverLinkLocal, to }: AdvertisementAddresses): Buffer {
  const icmpLength = 16 + 8;
  const frame = Buffer.alloc(ETH + IP6 + icmpLength);
  macBytes(to.mac).copy(frame, 0);
  macBytes(serverMac).copy(frame, 6);
  frame.writeUInt16BE(ETHERTYPE_IPV6, 12);
  const ip = frame.subarray(ETH);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(icmpLength, 4);
  ip[6] = NEXT_HEADER_ICMPV6;
  ip[7] = 255;
  const destination = to.source.every((b) => b === 0) ? ALL_NODES : to.source;
  serverLinkLocal.copy(ip, 8);
  destination.copy(ip, 24);
  const icmp = ip.subarray(IP6);
  icmp[0] = ICMPV6_ROUTER_ADVERTISEMENT;
  // code, checksum, cur hop limit, flags (M, O), router lifetime, reachable time, retrans timer: all 0.
  icmp[16] = OPTION_SOURCE_LINK_LAYER;
  icmp[17] = 1;
  macBytes(serverMac).copy(icmp, 18);
  icmp.writeUInt16BE(checksum(serverLinkLocal, destination, icmp), 2);
  return frame;
}

/** ff02::1 */
const ALL_NODES = Buffer.from('ff020000000000000000000000000001', 'hex');

/** The ICMPv6 checksum over the pseudo-header and message (0 when `icmp` carries a correct one). */
export function checksum(source: Buffer, destination: Buffer, icmp: Buffer): number {
  let sum = 0;
  const add = (buf: Buffer) => {
    for (let i = 0; i < buf.length; i += 2) sum += (buf[i]! << 8) + (buf[i + 1] ?? 0);
  };
  add(source);
  add(destination);
  sum += (icmp.length >>> 16) + (icmp.length & 0xffff) + NEXT_HEADER_ICMPV6;
  add(icmp);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** The EUI-64 link-local address of a MAC (RFC 4291 appendix A), for an interface whose own is unknown. */
export function linkLocalFromMac(mac: string): Buffer {
  const m = macBytes(mac);
  return Buffer.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0]! ^ 0x02, m[1]!, m[2]!, 0xff, 0xfe, m[3]!, m[4]!, m[5]!]);
}

/** fe80::1%br0 style text (without the zone) to 16 bytes; null when not an IPv6 address. */
export function ipv6Bytes(text: string): Buffer | null {
  const address = text.split('%')[0]!;
  const halves = address.split('::');
  if (halves.length > 2) return null;
  const groups = (part: string) => (part === '' ? [] : part.split(':'));
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  const fill = 8 - head.length - tail.length;
  if ((halves.length === 1 && fill !== 0) || fill < 0) return null;
  const all = [...head, ...Array<string>(halves.length === 2 ? fill : 0).fill('0'), ...tail];
  if (all.length !== 8 || !all.every((g) => /^[0-9a-f]{1,4}$/i.test(g))) return null;
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

export function ipv6Text(bytes: Buffer): string {
  const groups = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::').replace(/:{3,}/, '::');
}

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.replace(/[:-]/g, ''), 'hex');
}

function macText(bytes: Buffer): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}
