/**
 * DHCP answer rate: our server vs dnsmasq, proxy mode and full mode, inside a private network
 * namespace. A client in a second namespace (this file, run with `client`) sends DISCOVERs one
 * at a time (OVMF's captured PXE DISCOVER, 200 MACs in turn) and waits for the matching OFFER; the table
 * gives answers per second, median and p99 round-trip and losses (no answer in 1 s). Each server
 * runs alone with per-packet logging off (ours LOG_LEVEL=warn, dnsmasq --quiet-dhcp).
 * Not the same work in proxy mode: dnsmasq 2.90's proxy OFFER to an arch-7 client carries no
 * boot file (the client must then ask on 4011), ours carries the file and option 43.
 *
 *   node --import tsx bench/dhcp.ts                (BENCH_N=2000 requests per case)
 */
import { createSocket } from 'node:dgram';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { decodeMessage } from '../server/dhcp/codec.ts';
import { createSegment, stopChild, type Segment } from '../server/lab/netns.ts';
import { waitForOutput } from '../server/lab/services.ts';
import { addClientNamespace } from '../test/dhcp/lab.ts';

const REPO = join(import.meta.dirname, '..');

interface Result {
  answered: number;
  lost: number;
  seconds: number;
  p50: number;
  p99: number;
}

async function client(count: number, wantAddress: boolean): Promise<Result> {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((resolve) => socket.bind(68, '0.0.0.0', resolve));
  socket.setBroadcast(true);
  let waiting: { xid: number; done: (ok: boolean) => void } | null = null;
  socket.on('message', (msg) => {
    const d = decodeMessage(msg);
    if (!d.ok || !waiting || d.message.xid !== waiting.xid) return;
    if (wantAddress && d.message.yiaddr === '0.0.0.0') return;
    waiting.done(true);
  });
  const template = await readFile(join(REPO, 'test/dhcp/fixtures/ovmf-pxe-discover.bin'));
  const rtts: number[] = [];
  let lost = 0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    const xid = 0x10000000 + i;
    // The DISCOVER OVMF's PXE client sent (golden fixture), with our xid and MAC.
    const packet = Buffer.from(template);
    packet.writeUInt32BE(xid, 4);
    Buffer.from([0x02, 0, 0, 0, 0x10, i % 200]).copy(packet, 28);
    const sent = process.hrtime.bigint();
    const ok = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 1000);
      waiting = { xid, done: (v) => { clearTimeout(timer); resolve(v); } };
      socket.send(packet, 67, '255.255.255.255');
    });
    waiting = null;
    if (ok) rtts.push(Number(process.hrtime.bigint() - sent) / 1e6);
    else lost++;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  socket.close();
  rtts.sort((a, b) => a - b);
  return { answered: rtts.length, lost, seconds, p50: rtts[Math.floor(rtts.length / 2)] ?? NaN, p99: rtts[Math.floor(rtts.length * 0.99)] ?? NaN };
}

if (process.argv[2] === 'client') {
  const result = await client(Number(process.argv[3]), process.argv[4] === 'full');
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

type Server = 'ours' | 'dnsmasq';
type Mode = 'proxy' | 'full';

async function startServer(segment: Segment, server: Server, mode: Mode, dir: string): Promise<ChildProcess> {
  const s = segment.subnet;
  if (server === 'ours') {
    const file = join(dir, `config-${mode}.json`);
    await writeFile(file, JSON.stringify({
      server: { address: segment.serverIp, stateDir: join(dir, `state-${mode}`), dhcp: mode === 'full' ? { mode, pool: { start: `${s}.10`, end: `${s}.250`, maxUnknownLeases: 241 } } : { mode } },
      images: { deb: { source: 'docker:debian:12' } },
      defaults: { unknown: 'boot-default' },
    }));
    const child = segment.spawn('node', ['--import', 'tsx', 'server/dhcp/run-standalone.ts', file], { cwd: REPO, env: { ...process.env, LOG_LEVEL: 'warn' } });
    await waitForOutput(child, /^ready /m, 30_000);
    return child;
  }
  const common = ['--keep-in-foreground', '--no-resolv', '--no-hosts', '--port=0', '--conf-file=/dev/null', '--pid-file=', '--log-facility=-',
    `--interface=${segment.bridge}`, '--bind-interfaces', ...(process.env.BENCH_DEBUG ? [] : ['--quiet-dhcp']), '--dhcp-leasefile=/dev/null'];
  const args = mode === 'proxy'
    ? [...common, `--dhcp-range=${s}.0,proxy`, '--pxe-service=BC_EFI,netboot,snponly']
    : [...common, `--dhcp-range=${s}.10,${s}.250,1h`, '--no-ping', '--dhcp-boot=snponly.efi'];
  const child = segment.spawn('dnsmasq', args);
  if (process.env.BENCH_DEBUG) child.stderr!.pipe(process.stderr);
  await waitForOutput(child, /started, version/, 10_000);
  return child;
}

const count = Number(process.env.BENCH_N ?? 2000);
const dir = await mkdtemp(join(tmpdir(), 'bench-dhcp-'));
const segment = await createSegment();
const rows: string[] = [];
try {
  const clientNs = await addClientNamespace(segment);
  try {
    for (const mode of ['proxy', 'full'] as Mode[]) {
      for (const server of ['dnsmasq', 'ours'] as Server[]) {
        const child = await startServer(segment, server, mode, dir);
        try {
          const runner = clientNs.spawn('node', ['--import', 'tsx', join(REPO, 'bench/dhcp.ts'), 'client', String(count), mode], { cwd: REPO });
          const line = await new Promise<string>((resolve, reject) => {
            createInterface({ input: runner.stdout! }).once('line', resolve);
            runner.once('exit', (code) => reject(new Error(`bench client exited with ${code}`)));
          });
          const r = JSON.parse(line) as Result;
          process.stderr.write(`${mode} ${server}: ${line}\n`);
          rows.push(`| ${mode} | ${server} | ${(r.answered / r.seconds).toFixed(0)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.lost} |`);
        } finally {
          await stopChild(child, 2000);
        }
      }
    }
  } finally {
    await clientNs.destroy();
  }
} finally {
  await segment.destroy();
  await rm(dir, { recursive: true, force: true });
}
process.stdout.write(`DISCOVER -> OFFER, ${count} sequential requests per case\n\n| mode | server | answers/s | p50 ms | p99 ms | lost |\n| --- | --- | --- | --- | --- | --- |\n${rows.join('\n')}\n`);
