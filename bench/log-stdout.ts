/**
 * What the server's log lines cost: netboot's stdout logger (asynchronous, batched: a write once
 * 8 KiB wait or every 100 ms) against pino's own asynchronous destination (a write per line
 * whenever the previous one is done), each logging the same request lines at a storm's pace into
 * a pipe that a reader copies to a file (as journald, a container runtime or bench/storm do).
 * Prints the CPU time of the logging process and of the reader, the number of reads the reader
 * needed, and the ratios. Cases alternate, so background load hits them alike; medians of the rounds.
 *
 *   node --import tsx bench/log-stdout.ts      (BENCH_LINES=6500 BENCH_PACE_MS=1 BENCH_ROUNDS=5)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const lines = Number(process.env.BENCH_LINES ?? 6500);
const paceMs = Number(process.env.BENCH_PACE_MS ?? 1);
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const EMITTER = join(import.meta.dirname, 'lib/log-emitter.ts');
type Variant = 'netboot' | 'pino-async';

interface Sample {
  emitterMs: number;
  readerMs: number;
  reads: number;
  lines: number;
}

/** One run: the logging process and its reader, each a process of its own so each CPU time is its own. */
async function once(variant: Variant, dir: string): Promise<Sample> {
  const out = join(dir, `${variant}.log`);
  // The reader: a process of its own that copies the pipe to a file and counts its reads.
  const reader = spawn(
    process.execPath,
    [
      '-e',
      `const out = require('fs').createWriteStream(${JSON.stringify(out)}); let reads = 0, bytes = 0;
       const before = process.cpuUsage();
       process.stdin.on('data', (c) => { reads++; bytes += c.length; out.write(c); });
       process.stdin.on('end', () => out.end(() => { const u = process.cpuUsage(before); process.stderr.write(JSON.stringify({ cpuMs: (u.user + u.system) / 1000, reads }) + '\\n'); }));`,
    ],
    { stdio: ['pipe', 'ignore', 'pipe'] },
  );
  const emitter = spawn(process.execPath, ['--import', 'tsx', EMITTER, variant, String(lines), String(paceMs)], { stdio: ['ignore', reader.stdin!, 'pipe'] });
  reader.stdin!.destroy(); // the emitter holds the pipe now: the reader sees its end when the emitter exits
  const report = (child: ChildProcess) =>
    new Promise<Record<string, number>>((resolve, reject) => {
      let err = '';
      child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
      child.on('close', (code) => {
        const last = err.trim().split('\n').at(-1) ?? '';
        if (code !== 0 || !last.startsWith('{')) reject(new Error(`${variant}: exit ${code}: ${err}`));
        else resolve(JSON.parse(last) as Record<string, number>);
      });
    });
  const [e, r] = await Promise.all([report(emitter), report(reader)]);
  const written = (await readFile(out, 'utf8')).split('\n').filter(Boolean).length;
  return { emitterMs: e.cpuMs!, readerMs: r.cpuMs!, reads: r.reads!, lines: written };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-log-'));
  try {
    const samples: Record<Variant, Sample[]> = { netboot: [], 'pino-async': [] };
    for (let round = 0; round < rounds; round++) {
      const order: Variant[] = round % 2 === 0 ? ['netboot', 'pino-async'] : ['pino-async', 'netboot'];
      for (const variant of order) {
        const s = await once(variant, dir);
        if (s.lines !== lines) throw new Error(`${variant}: ${s.lines} of ${lines} lines reached the file`);
        samples[variant].push(s);
      }
    }
    console.log(`${lines} request lines, one every ${paceMs} ms, into a pipe read by a process that copies it to a file; medians of ${rounds} rounds\n`);
    console.log('| logger | logging process CPU ms | reader CPU ms | reads |');
    console.log('|---|---|---|---|');
    const row = (v: Variant) => {
      const s = samples[v];
      return [median(s.map((x) => x.emitterMs)), median(s.map((x) => x.readerMs)), median(s.map((x) => x.reads))] as const;
    };
    for (const v of ['netboot', 'pino-async'] as const) {
      const [e, r, n] = row(v);
      console.log(`| ${v} | ${e.toFixed(0)} | ${r.toFixed(0)} | ${n} |`);
    }
    const [ne, nr] = row('netboot');
    const [pe, pr] = row('pino-async');
    console.log(`\nlog-stdout: netboot ${(ne + nr).toFixed(0)} CPU ms vs pino-async ${(pe + pr).toFixed(0)} CPU ms = ${((ne + nr) / (pe + pr)).toFixed(2)}x (logging process ${(ne / pe).toFixed(2)}x, reader ${(nr / pr).toFixed(2)}x)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
