// Run inside a test's network namespace: every address of /proc/net/arp (and some that are not
// there) looked up through the netlink addon and through the /proc reader; prints both as JSON.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { kernelNeighbours, parseArpTable } from '../../server/boot/neighbours.ts';

const extra = process.argv.slice(2);
const table = parseArpTable(readFileSync('/proc/net/arp', 'utf8'));
const addresses = [...new Set([...readFileSync('/proc/net/arp', 'utf8').split('\n').slice(1).map((l) => l.split(/\s+/)[0]!).filter(Boolean), ...extra])];
// Loaded here, not by kernelNeighbours(): a missing addon must fail the test, not fall back to /proc.
const addon = createRequire(import.meta.url)('../../build/Release/netboot_neigh.node') as { lookup(ip: string, ifname: string): string | null };
const viaNetlink = kernelNeighbours('/proc/net/arp', addon);
const viaProc = kernelNeighbours('/proc/net/arp', null);
const out: Record<string, { netlink: string | null; proc: string | null; table: string | null }> = {};
for (const ip of addresses) {
  out[ip] = { netlink: (await viaNetlink(ip)) ?? null, proc: (await viaProc(ip)) ?? null, table: table.get(ip) ?? null };
}
process.stdout.write(JSON.stringify(out));
