import { readFileSync } from 'node:fs';

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

/**
 * Reads the table for each turn of the event loop: lookups in the same turn share one read,
 * and the first lookup of the next turn reads it afresh, so a change shows at once. The read
 * is synchronous: /proc is kernel memory (a 500-entry table reads in well under a millisecond),
 * while an async read is four trips through the thread pool, each waiting a whole turn of the
 * loop, which in a boot storm is long.
 */
export function kernelNeighbours(path = '/proc/net/arp'): NeighbourLookup {
  let table: string | null = null;
  return async (ip) => {
    if (table === null) {
      try {
        table = readFileSync(path, 'utf8');
      } catch {
        table = '';
      }
      setImmediate(() => (table = null));
    }
    return arpEntry(table, ip);
  };
}
