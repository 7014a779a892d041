import { readFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { performance } from 'node:perf_hooks';
import { ipToInt } from '../config/ipv4.ts';
import { loadAddon } from '../native-addon.ts';

/**
 * The kernel's IPv4 neighbour (ARP) table, as the server's own network namespace sees it:
 * the link-layer address behind a TCP peer on the segment. To answer a SYN the kernel must
 * know the peer's MAC, so every connected peer on the segment has an entry (REACHABLE or STALE).
 */

/** ATF_COM: the entry holds a resolved hardware address. */
const ATF_COM = 0x2;

/** Parses /proc/net/arp: IP address -> lower-case MAC, complete entries only. */
export function parseArpTable(text: string): Map<string, string> {
  const table = new Map<string, string>();
  for (const line of text.split('\n').slice(1)) {
    const [ip, , flags, mac] = line.trim().split(/\s+/);
    if (!ip || !flags || !mac) continue;
    if ((Number.parseInt(flags, 16) & ATF_COM) === 0) continue;
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(mac) || mac === '00:00:00:00:00:00') continue;
    table.set(ip, mac.toLowerCase());
  }
  return table;
}

/**
 * The complete entry of one address in /proc/net/arp text, as parseArpTable would give it,
 * without splitting the whole table: a storm of 500 machines asks once per script and layer
 * request, and parsing every line each time was 7 % of the server's busy time (bench/storm).
 */
export function arpEntry(text: string, ip: string): string | undefined {
  for (let at = text.indexOf(`\n${ip} `); at >= 0; at = text.indexOf(`\n${ip} `, at + 1)) {
    const end = text.indexOf('\n', at + 1);
    const entry = parseArpTable(`header\n${text.slice(at + 1, end < 0 ? undefined : end)}`).get(ip);
    if (entry !== undefined) return entry;
  }
  return undefined;
}

export type NeighbourLookup = (ip: string) => Promise<string | undefined>;

interface NeighBinding {
  lookup(ip: string, ifname: string): string | null;
}

/** The netboot_neigh addon (native/neigh/, built by `npm ci`), or null when it was not built. */
function loadNeighAddon(): NeighBinding | null {
  return loadAddon<NeighBinding>('netboot_neigh').binding;
}

/** The IPv4 subnets (address, netmask as integers) of each interface other than loopback. */
type InterfaceSubnets = { name: string; subnets: [number, number][] }[];

function interfaceSubnets(interfaces: ReturnType<typeof networkInterfaces>): InterfaceSubnets {
  return Object.entries(interfaces).flatMap(([name, addresses]) => {
    const subnets = (addresses ?? []).filter((a) => a.family === 'IPv4' && !a.internal).map((a): [number, number] => [ipToInt(a.address), ipToInt(a.netmask)]);
    return subnets.length ? [{ name, subnets }] : [];
  });
}

function orderFor(ip: string, interfaces: InterfaceSubnets): string[] {
  const target = isIPv4(ip) ? ipToInt(ip) : null;
  const near: string[] = [];
  const far: string[] = [];
  for (const { name, subnets } of interfaces) {
    const holds = target !== null && subnets.some(([address, mask]) => ((address ^ target) & mask) === 0);
    (holds ? near : far).push(name);
  }
  return [...near, ...far];
}

/** IPv4 interfaces other than loopback, those whose subnet holds `ip` first. */
export function interfacesFor(ip: string, interfaces = networkInterfaces()): string[] {
  return orderFor(ip, interfaceSubnets(interfaces));
}

/**
 * The kernel's entry for one address. With the netboot_neigh addon: asked over rtnetlink for
 * that address alone, on each interface in turn (its own subnet's first), synchronously
 * (~30 us). Without it: /proc/net/arp, which the kernel formats whole at each read (~0.8 ms for
 * 600 entries) in 4 KiB pieces, so it is read off the event loop, and lookups made before the
 * next read starts share it (a read begins on the next turn of the loop, so each still sees a
 * table read after it asked).
 */
export function kernelNeighbours(path = '/proc/net/arp', addon: NeighBinding | null = path === '/proc/net/arp' ? loadNeighAddon() : null): NeighbourLookup {
  if (addon) {
    // os.networkInterfaces() costs tens of microseconds (0.3 s of a 500-machine storm's main
    // thread when called per lookup): reused for a second, and taken afresh before a miss is final.
    let interfaces: { at: number; list: InterfaceSubnets } | null = null;
    const query = (ip: string, list: InterfaceSubnets): string | undefined => {
      for (const name of orderFor(ip, list)) {
        const mac = addon.lookup(ip, name);
        if (mac !== null) return mac === '00:00:00:00:00:00' ? undefined : mac;
      }
      return undefined;
    };
    const fresh = () => (interfaces = { at: performance.now(), list: interfaceSubnets(networkInterfaces()) }).list;
    return async (ip) => {
      if (!isIPv4(ip)) return undefined;
      if (interfaces === null || performance.now() - interfaces.at > 1000) return query(ip, fresh());
      return query(ip, interfaces.list) ?? query(ip, fresh());
    };
  }
  let next: Promise<string> | null = null;
  return async (ip) => {
    next ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      next = null;
      return readFile(path, 'utf8').catch(() => '');
    });
    return arpEntry(await next, ip);
  };
}
