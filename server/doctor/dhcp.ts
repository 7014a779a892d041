import { macFromBytes } from '../config/mac.ts';
import {
  BOOTREPLY,
  BOOTREQUEST,
  BROADCAST_FLAG,
  MessageType,
  Opt,
  bootfileName,
  decodeMessage,
  encodeMessage,
  getOption,
  leaseTime,
  messageType,
  option,
  serverId,
  textOption,
  u8Option,
  vendorClass,
  type DhcpMessage,
} from '../dhcp/codec.ts';
import type { Finding } from './finding.ts';

/**
 * The one DHCPDISCOVER doctor sends, and what the answers mean for the configured mode. It
 * looks like a BIOS PXE client (vendor class PXEClient) so a second PXE/proxyDHCP server
 * answers too, from a locally administered MAC that no real machine has.
 */

/** 02:6e:62:xx:xx:xx ("nb"): the locally administered bit is set, so it is no vendor's MAC. */
export function testMac(random: Uint8Array): string {
  return macFromBytes(Uint8Array.from([0x02, 0x6e, 0x62, random[0] ?? 0, random[1] ?? 0, random[2] ?? 0]));
}

export function buildDiscover(mac: string, xid: number): Buffer {
  const chaddr = Buffer.alloc(16);
  Buffer.from(mac.split(':').map((h) => parseInt(h, 16))).copy(chaddr);
  const message: DhcpMessage = {
    op: BOOTREQUEST,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid,
    secs: 0,
    // Ask for broadcast answers: we have no address the servers could unicast to.
    flags: BROADCAST_FLAG,
    ciaddr: '0.0.0.0',
    yiaddr: '0.0.0.0',
    siaddr: '0.0.0.0',
    giaddr: '0.0.0.0',
    chaddr,
    sname: '',
    file: '',
    options: [
      u8Option(Opt.MESSAGE_TYPE, MessageType.DISCOVER),
      option(Opt.PARAMETER_LIST, [Opt.SUBNET_MASK, Opt.ROUTER, Opt.DNS, Opt.LEASE_TIME, Opt.SERVER_ID, Opt.VENDOR_CLASS, Opt.TFTP_SERVER, Opt.BOOTFILE, Opt.VENDOR]),
      textOption(Opt.VENDOR_CLASS, 'PXEClient:Arch:00000:UNDI:002001'),
      option(Opt.CLIENT_ARCH, [0, 0]),
      textOption(Opt.HOSTNAME, 'netboot-doctor'),
    ],
  };
  return encodeMessage(message);
}

export interface Offer {
  /** Who sent it (UDP source). */
  from: string;
  server: string;
  /** The address offered; null for a proxyDHCP offer (boot info only). */
  address: string | null;
  leaseSeconds?: number;
  router?: string;
  /** Bootfile from the file field or option 67. */
  bootfile?: string;
  nextServer?: string;
  pxe: boolean;
  /** Milliseconds between our DISCOVER and this offer (servers that ping an address first take seconds). */
  afterMs?: number;
}

/** An answer to our DISCOVER, or null (another client's traffic, garbage, not an OFFER). */
export function parseOffer(packet: Buffer, from: string, xid: number, mac: string): Offer | null {
  const decoded = decodeMessage(packet);
  if (!decoded.ok) return null;
  const m = decoded.message;
  if (m.op !== BOOTREPLY || m.xid >>> 0 !== xid >>> 0 || macFromBytes(m.chaddr.subarray(0, 6)) !== mac) return null;
  if (messageType(m) !== MessageType.OFFER) return null;
  const router = getOption(m, Opt.ROUTER);
  // Some servers NUL-terminate option 67 (the PXE spec's habit).
  const bootfile = (bootfileName(m) || m.file).replace(/\0+$/, '') || undefined;
  return {
    from,
    server: serverId(m) ?? from,
    address: m.yiaddr === '0.0.0.0' ? null : m.yiaddr,
    leaseSeconds: leaseTime(m),
    router: router && router.length >= 4 ? [...router.subarray(0, 4)].join('.') : undefined,
    bootfile,
    nextServer: m.siaddr !== '0.0.0.0' ? m.siaddr : undefined,
    pxe: vendorClass(m)?.startsWith('PXEClient') ?? false,
  };
}

export function describeOffer(o: Offer): string {
  const parts = [o.address ? `offers ${o.address}` : 'offers no address (proxyDHCP)'];
  if (o.leaseSeconds !== undefined) parts.push(`lease ${o.leaseSeconds}s`);
  if (o.router) parts.push(`router ${o.router}`);
  if (o.nextServer) parts.push(`next-server ${o.nextServer}`);
  if (o.bootfile) parts.push(`bootfile ${o.bootfile}`);
  if (o.pxe) parts.push('PXEClient');
  if (o.afterMs !== undefined) parts.push(`after ${(o.afterMs / 1000).toFixed(1)} s`);
  return `${o.server}${o.from !== o.server ? ` (via ${o.from})` : ''}: ${parts.join(', ')}`;
}

/** Where the DISCOVER goes: the limited broadcast leaves by the route for 255.255.255.255, so use it only when that is our interface. */
export function discoverDestination(broadcastRouteDev: string | null, ifname: string, address: string, prefixlen: number): string {
  if (broadcastRouteDev === ifname) return '255.255.255.255';
  const ip = address.split('.').reduce((n, o) => ((n << 8) | Number(o)) >>> 0, 0);
  const mask = prefixlen === 0 ? 0 : (0xffffffff << (32 - prefixlen)) >>> 0;
  const broadcast = (ip | ~mask) >>> 0;
  return [24, 16, 8, 0].map((s) => (broadcast >>> s) & 0xff).join('.');
}

export type ProbeResult = { ok: true; offers: Offer[]; waitedMs: number; mac: string; destination: string } | { ok: false; error: string };

export const PROXY_HINT = 'see the README, "Running beside an existing DHCP server"';

/** What the offers mean for server.dhcp.mode. Offers from this netboot (server id = server.address) are left out. */
export function checkDhcp(probe: ProbeResult, mode: 'proxy' | 'full' | 'off', address: string, httpPort: number): Finding[] {
  if (!probe.ok) {
    return [
      {
        check: 'dhcp',
        severity: 'warn',
        summary: `could not send the DHCPDISCOVER: ${probe.error}`,
        fix: /EADDRINUSE/.test(probe.error)
          ? 'a DHCP client on this host holds UDP port 68 without sharing it: give the interface a static address (a boot server wants one anyway) or stop that client while doctor runs'
          : /no IPv4 address/.test(probe.error)
            ? `put server.address (${address}) on that interface`
            : 'run doctor as root (it binds UDP port 68 to hear the offers)',
      },
    ];
  }
  const others = probe.offers.filter((o) => o.server !== address && o.from !== address);
  const ours = probe.offers.length - others.length;
  const details = others.map(describeOffer);
  const findings: Finding[] = [];
  const heard = `one DHCPDISCOVER from ${probe.mac} to ${probe.destination}, ${probe.waitedMs / 1000} s of listening`;
  const givers = others.filter((o) => o.address);
  // siaddr alone means little (dnsmasq always puts its own address there); a bootfile or a PXE answer boots.
  const bootsElsewhere = (o: Offer) => (o.bootfile !== undefined || o.pxe) && !pointsAtUs(o);
  const pointsAtUs = (o: Offer) => o.bootfile !== undefined && (o.bootfile.includes(address) || o.nextServer === address);
  const bootOthers = others.filter(bootsElsewhere);
  const servers = (list: Offer[]) => [...new Set(list.map((o) => o.server))].join(', ');

  if (mode === 'full') {
    if (givers.length) {
      findings.push({
        check: 'dhcp',
        severity: 'fail',
        summary: `another DHCP server hands out addresses on this segment (${servers(givers)}), and server.dhcp.mode is full: machines take whichever answers first`,
        details,
        fix: `set server.dhcp.mode: proxy to boot beside it (${PROXY_HINT}), or stop that server on this segment`,
      });
    } else {
      findings.push({ check: 'dhcp', severity: 'ok', summary: `no other DHCP server offered an address (${heard}): full mode fits`, details: details.length ? details : undefined });
    }
  } else if (mode === 'proxy') {
    if (givers.length) {
      findings.push({ check: 'dhcp', severity: 'ok', summary: `${servers(givers)} hands out addresses: proxy mode fits (netboot adds the boot information)`, details });
    } else {
      findings.push({
        check: 'dhcp',
        severity: 'fail',
        summary: `no DHCP server offered an address (${heard}): in proxy mode netboot gives no addresses, so machines get none`,
        details: details.length ? details : undefined,
        fix: 'set server.dhcp.mode: full with a server.dhcp.pool, or start the lab DHCP server on this segment',
      });
    }
  } else {
    const pointing = others.filter(pointsAtUs);
    findings.push(
      pointing.length
        ? { check: 'dhcp', severity: 'ok', summary: `DHCP is off here; ${servers(pointing)} points machines at ${address}`, details }
        : {
            check: 'dhcp',
            severity: 'warn',
            summary: `DHCP is off here and no DHCP server's offer points at ${address}`,
            details: details.length ? details : undefined,
            fix: `on the lab DHCP server: next-server ${address} with bootfile undionly.kpxe (BIOS) / snponly.efi (UEFI), and http://${address}:${httpPort}/boot.ipxe for user class iPXE; or set server.dhcp.mode: proxy`,
          },
    );
  }
  if (mode !== 'off' && bootOthers.length) {
    findings.push({
      check: 'dhcp',
      severity: 'warn',
      summary: `${servers(bootOthers)} also answers PXE clients with boot information: firmware may boot from it instead of netboot`,
      details: bootOthers.map(describeOffer),
      fix: `remove next-server/filename (options 66/67) and PXE answers for these machines on that server, or point them at ${address}`,
    });
  }
  if (ours) findings.push({ check: 'dhcp', severity: 'info', summary: `this netboot answered too (${ours} offer${ours === 1 ? '' : 's'} from ${address}, left out above)` });
  return findings;
}
