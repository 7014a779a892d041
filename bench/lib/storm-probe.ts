/**
 * bench/storm's script probe: one more machine, in a process of its own, so that what it times
 * is the server and the segment, not the fleet's event loop (500 machines keep that busy, and
 * every phase the fleet reports includes its own backlog). It leases an address as iPXE does,
 * then, between a `go` line on stdin and stdin's end, fetches boot.ipxe and its per-MAC script
 * every PROBE_INTERVAL_MS, one after the other, and times each request.
 *
 *   node --import tsx bench/lib/storm-probe.ts MAC SERVER_NS
 *     stdout: `ready` once leased, then one JSON line (ProbeReport) after stdin ends
 */
import { execFile } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { scriptCommand } from './storm-client.ts';
import { DhcpMux, dhcpBoot, httpFetch, type HttpCounters } from './storm-protocols.ts';
import { loopLagFromMetrics, SERVER_LAG_EVERY_MS, type ProbeReport } from './storm-summary.ts';

export const PROBE_INTERVAL_MS = 50;


async function main(): Promise<void> {
  const [mac, serverNs] = process.argv.slice(2);
  if (!mac || !serverNs) throw new Error('usage: storm-probe.ts MAC SERVER_NS');
  const mux = await DhcpMux.open();
  // Port 68 is the fleet's once it starts: lease first, then let go of the port.
  const lease = await dhcpBoot(mux, 'ipxe', mac, 0x5f000001).finally(() => mux.close());
  // As for every fleet machine: the neighbour entry a real machine's ARP would leave (netboot's identity check).
  await promisify(execFile)('ip', ['-n', serverNs, 'neigh', 'replace', lease.ip, 'lladdr', mac, 'nud', 'permanent', 'dev', 'br0']);
  const report: ProbeReport = { entryMs: [], machineMs: [], entryAtMs: [], failures: 0, errors: [] };
  let goAt = 0;
  const counters: HttpCounters = { waits: 0, waitMs: 0, retries: 0 };
  const http = { localAddress: lease.ip, jitter: () => 0, counters, tries: 1, keepBody: true, idleTimeoutMs: 30_000 };
  const timed = async (url: string, into: number[]): Promise<string | null> => {
    const start = performance.now();
    try {
      const { body } = await httpFetch(url, http);
      into.push(performance.now() - start);
      return body;
    } catch (err) {
      report.failures++;
      const message = (err as Error).message;
      if (!report.errors.includes(message) && report.errors.length < 5) report.errors.push(message);
      return null;
    }
  };

  // netboot's main-loop lag, read from its /metrics (each read covers the time since the one before; the first, at
  // `go`, only starts the count). A server without that metric (the peer's nginx) is not asked again.
  const metricsUrl = new URL('/metrics', lease.bootfile).href;
  let lagReadAt: number | null = null;
  const readServerLag = async (): Promise<void> => {
    const text = await httpFetch(metricsUrl, { ...http, counters: { waits: 0, waitMs: 0, retries: 0 } }).then((r) => r.body, () => null);
    const lag = text === null ? null : loopLagFromMetrics(text);
    if (lag === null) {
      lagReadAt = Infinity;
      return;
    }
    if (lagReadAt !== null) {
      report.serverLoopLagMs ??= { p99: [], max: [] };
      report.serverLoopLagMs.p99.push(lag.p99);
      report.serverLoopLagMs.max.push(lag.max);
    }
    lagReadAt = performance.now();
  };

  let state = 'waiting' as 'waiting' | 'probing' | 'done';
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    if (line.trim() === 'go' && state === 'waiting') {
      state = 'probing';
      goAt = performance.now();
    }
  });
  const ended = new Promise<void>((resolve) => lines.once('close', resolve)).then(() => {
    state = 'done';
  });
  process.stdout.write('ready\n');
  while (state !== 'done') {
    if (state === 'waiting') {
      await Promise.race([ended, sleep(10)]);
      continue;
    }
    const next = performance.now() + PROBE_INTERVAL_MS;
    if (lagReadAt === null || performance.now() - lagReadAt >= SERVER_LAG_EVERY_MS) await readServerLag();
    report.entryAtMs!.push(performance.now() - goAt);
    const entry = await timed(lease.bootfile, report.entryMs);
    const chain = entry === null ? null : scriptCommand(entry, 'chain');
    if (chain) await timed(chain.url.replace('${mac:hexhyp}', mac.replace(/:/g, '-')), report.machineMs);
    await Promise.race([ended, sleep(Math.max(0, next - performance.now()))]);
  }
  // Exit once the line is out: a pipe the reader has not emptied takes the rest asynchronously, and an exit at once would cut it.
  process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(0));
}

if (process.argv[1] === import.meta.filename) await main();
