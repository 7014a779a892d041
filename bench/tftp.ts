/**
 * TFTP throughput: our server vs tftpd-hpa (`in.tftpd`), both on loopback high ports, serving
 * the same 50 MB file to the same clients (atftp, curl) at blksize 1468; ours also with
 * windowsize 16 and 64 (tftpd-hpa 5.2 has no windowsize). Median of a few repetitions, cases
 * interleaved so background load hits them alike; 'server CPU s' is the serving process's CPU time
 * (load-independent: compare it when the machine is busy).
 *
 *   node --import tsx bench/tftp.ts            (BENCH_REPS=5 BENCH_MB=50 to change)
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { dirSource } from '../server/tftp/files.ts';
import { TftpServer } from '../server/tftp/server.ts';

const run = promisify(execFile);
const reps = Number(process.env.BENCH_REPS ?? 3);
const megabytes = Number(process.env.BENCH_MB ?? 50);
const HPA_PORT = 16970;

interface Case {
  name: string;
  server: 'ours' | 'tftpd-hpa';
  client: 'atftp' | 'curl';
  windowsize: number;
}

const cases: Case[] = [
  { name: 'tftpd-hpa  atftp  blksize 1468', server: 'tftpd-hpa', client: 'atftp', windowsize: 1 },
  { name: 'ours       atftp  blksize 1468', server: 'ours', client: 'atftp', windowsize: 1 },
  { name: 'ours       atftp  blksize 1468 windowsize 16', server: 'ours', client: 'atftp', windowsize: 16 },
  { name: 'ours       atftp  blksize 1468 windowsize 64', server: 'ours', client: 'atftp', windowsize: 64 },
  { name: 'tftpd-hpa  curl   blksize 1468', server: 'tftpd-hpa', client: 'curl', windowsize: 1 },
  { name: 'ours       curl   blksize 1468', server: 'ours', client: 'curl', windowsize: 1 },
];

function clientCommand(c: Case, port: number, output: string): [string, string[]] {
  if (c.client === 'curl') return ['curl', ['-sS', '-m', '120', '--tftp-blksize', '1468', '-o', output, `tftp://127.0.0.1:${port}/bench.bin`]];
  const args = ['--option', 'blksize 1468'];
  if (c.windowsize > 1) args.push('--option', `windowsize ${c.windowsize}`);
  return ['atftp', [...args, '-g', '-r', 'bench.bin', '-l', output, '127.0.0.1', String(port)]];
}

async function timed(cmd: string, args: string[]): Promise<number> {
  const start = process.hrtime.bigint();
  await run(cmd, args, { timeout: 180_000 });
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** CPU seconds of a process (utime + stime), or null once it is gone. */
async function processCpu(pid: number): Promise<number | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of stat (1-based), counted here from field 3.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return null;
  }
}

/**
 * in.tftpd serves each transfer in a forked child that is reaped without CPU accounting, so
 * its children are sampled while the client runs; the last sample before a child exits is
 * kept (underestimates by at most one 20 ms sampling interval).
 */
function sampleChildrenCpu(parent: number): { stop(): Promise<number> } {
  const last = new Map<number, number>();
  let running = true;
  const loop = (async () => {
    while (running) {
      const children = await readFile(`/proc/${parent}/task/${parent}/children`, 'utf8').catch(() => '');
      for (const pid of children.split(/\s+/).filter(Boolean).map(Number)) {
        const cpu = await processCpu(pid);
        if (cpu !== null) last.set(pid, cpu);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return [...last.values()].reduce((a, b) => a + b, 0);
    },
  };
}

/** CPU seconds this process (our server; the bench itself idles while a client runs) has used. */
function ownCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function waitForUdpPort(port: number): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const { stdout } = await run('ss', ['-Hunl', `sport = :${port}`]);
    if (stdout.trim() !== '') return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on udp ${port}`);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-tftp-'));
  const out = await mkdtemp(join(tmpdir(), 'bench-tftp-out-'));
  let hpa: ChildProcess | undefined;
  const ours = new TftpServer({ host: '127.0.0.1', port: 0, source: dirSource(dir), limits: { maxBlksize: 1468, maxWindowsize: 64 } });
  try {
    const content = randomBytes(megabytes * 1024 * 1024);
    await writeFile(join(dir, 'bench.bin'), content, { mode: 0o644 });
    await chmod(dir, 0o755); // in.tftpd drops to an unprivileged user
    const expected = sha(content);
    const oursPort = (await ours.start()).port;
    hpa = spawn('in.tftpd', ['-L', '-a', `127.0.0.1:${HPA_PORT}`, '-s', dir], { stdio: 'ignore' });
    await waitForUdpPort(HPA_PORT);

    const results = new Map<Case, number[]>();
    const cpu = new Map<Case, number[]>();
    for (let rep = 0; rep < reps; rep++) {
      // Interleave the cases so background load affects all of them alike.
      for (const c of cases) {
        const output = join(out, 'got.bin');
        await rm(output, { force: true });
        const [cmd, args] = clientCommand(c, c.server === 'ours' ? oursPort : HPA_PORT, output);
        const cpuBefore = ownCpu();
        const sampler = c.server === 'tftpd-hpa' ? sampleChildrenCpu(hpa.pid!) : undefined;
        const seconds = await timed(cmd, args);
        const cpuUsed = sampler ? await sampler.stop() : ownCpu() - cpuBefore;
        cpu.set(c, [...(cpu.get(c) ?? []), cpuUsed]);
        if (sha(await readFile(output)) !== expected) throw new Error(`${c.name}: downloaded file differs`);
        results.set(c, [...(results.get(c) ?? []), seconds]);
      }
    }

    const rows = cases.map((c) => ({ c, seconds: median(results.get(c)!) }));
    const baseline = (client: Case['client']) => rows.find((r) => r.c.server === 'tftpd-hpa' && r.c.client === client)!.seconds;
    console.log(`\nTFTP ${megabytes} MB file over loopback, median of ${reps} (all runs checked byte-identical)\n`);
    console.log(`${'case'.padEnd(46)} ${'seconds'.padStart(8)} ${'MB/s'.padStart(8)} ${'vs tftpd-hpa'.padStart(13)} ${'server CPU s'.padStart(13)}   runs (s)`);
    for (const { c, seconds } of rows) {
      const ratio = baseline(c.client) / seconds;
      const runs = results.get(c)!.map((s) => s.toFixed(2)).join(' ');
      const cpuSeconds = median(cpu.get(c)!);
      console.log(
        `${c.name.padEnd(46)} ${seconds.toFixed(3).padStart(8)} ${(megabytes / seconds).toFixed(1).padStart(8)} ${`${ratio.toFixed(2)}x`.padStart(13)} ${cpuSeconds.toFixed(2).padStart(13)}   ${runs}`,
      );
    }
    console.log(`\nload average at the end: ${(await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ')} (2 cores shared; figures are noisy under load)`);
  } finally {
    hpa?.kill('SIGTERM');
    await ours.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(out, { recursive: true, force: true });
  }
}

await main();
