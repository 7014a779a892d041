import { readFile } from 'node:fs/promises';

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

export type NeighbourLookup = (ip: string) => Promise<string | undefined>;

/** Reads the table afresh on each lookup: it is small, and only grants of secrets ask. */
export function kernelNeighbours(path = '/proc/net/arp'): NeighbourLookup {
  return async (ip) => parseArpTable(await readFile(path, 'utf8').catch(() => '')).get(ip);
}
