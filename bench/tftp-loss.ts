/**
 * TFTP under random packet loss (a soak, not a test: which packets the dice drop differs per
 * run). Our server and tftpd-hpa serve the same 600 KB file inside a private network namespace
 * whose INPUT chain drops a share of all UDP packets (iptables `statistic --mode random`; both
 * directions pass INPUT, client and server share the namespace). Each client fetches it
 * BENCH_ROUNDS times from each server; the table gives completed/failed transfers and the
 * median time, and the last line the ratio of medians (ours / tftpd-hpa, lower is better).
 * npm test covers loss with chosen packets instead (test/tftp/loss.test.ts).
 *
 *   node --import tsx bench/tftp-loss.ts     (BENCH_ROUNDS=20 BENCH_LOSS=0.05)
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createSegment } from '../server/lab/netns.ts';

const rounds = Number(process.env.BENCH_ROUNDS ?? 20);
const loss = Number(process.env.BENCH_LOSS ?? 0.05);
const OURS_PORT = 16969;
const HPA_PORT = 16970;

const dir = await mkdtemp(join(tmpdir(), 'bench-tftp-loss-'));
const content = randomBytes(600_000);
const digest = createHash('sha256').update(content).digest('hex');
await writeFile(join(dir, 'file.bin'), content, { mode: 0o644 });
// in.tftpd drops to its own user: the directory must be readable for it.
await chmod(dir, 0o755);
const segment = await createSegment();
const cleanup = async () => {
  await segment.destroy();
  await rm(dir, { recursive: true, force: true });
};
process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));

try {
  const ours = segment.spawn('node', ['--import', 'tsx', join(import.meta.dirname, '../test/tftp/serve-child.ts'), dir, segment.serverIp, String(OURS_PORT), '100'], { cwd: process.cwd() });
  await new Promise<void>((resolve, reject) => {
    ours.once('exit', (code) => reject(new Error(`our server exited with ${code}`)));
    createInterface({ input: ours.stdout! }).on('line', (line) => line.includes('"ready"') && resolve());
  });
  segment.spawn('in.tftpd', ['--foreground', '--listen', '--address', `${segment.serverIp}:${HPA_PORT}`, '--secure', dir]);
  await segment.exec('iptables', ['-A', 'INPUT', '-p', 'udp', '-m', 'statistic', '--mode', 'random', '--probability', String(loss), '-j', 'DROP']);

  const clients: Record<string, (port: number, out: string) => [string, string[]]> = {
    'curl lockstep': (port, out) => ['curl', ['-sS', '-m', '60', '--tftp-no-options', '-o', out, `tftp://${segment.serverIp}:${port}/file.bin`]],
    'atftp blksize 1468': (port, out) => ['atftp', ['--option', 'blksize 1468', '-g', '-r', 'file.bin', '-l', out, segment.serverIp, String(port)]],
  };
  const rows: string[] = [];
  const medians: Record<string, number[]> = { ours: [], 'tftpd-hpa': [] };
  for (const [clientName, command] of Object.entries(clients)) {
    for (const [serverName, port] of [['ours', OURS_PORT], ['tftpd-hpa', HPA_PORT]] as const) {
      let ok = 0;
      const times: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const out = join(dir, `out-${i}`);
        const [cmd, args] = command(port, out);
        const started = process.hrtime.bigint();
        const done = await segment.exec(cmd, args, { timeoutMs: 90_000 }).then(() => true, () => false);
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        const intact = done && createHash('sha256').update(await readFile(out).catch(() => Buffer.alloc(0))).digest('hex') === digest;
        if (intact) {
          ok++;
          times.push(seconds);
        }
        await rm(out, { force: true });
      }
      times.sort((a, b) => a - b);
      const median = times.length ? times[Math.floor(times.length / 2)]! : NaN;
      medians[serverName]!.push(median);
      rows.push(`${clientName.padEnd(20)} ${serverName.padEnd(10)} ${String(ok).padStart(4)} ok ${String(rounds - ok).padStart(4)} failed   median ${median.toFixed(2)} s`);
    }
  }
  const { stdout } = await segment.exec('iptables', ['-L', 'INPUT', '-v', '-n', '-x']);
  console.log(`TFTP, ${rounds} transfers of 600 KB per client and server, ${(loss * 100).toFixed(1)} % of UDP packets dropped at random`);
  console.log(rows.join('\n'));
  console.log(`dropped packets in all: ${/^\s*(\d+)\s+\d+\s+DROP/m.exec(stdout)?.[1] ?? '?'}`);
  const ratio = medians.ours!.map((m, i) => (m / medians['tftpd-hpa']![i]!).toFixed(2)).join(', ');
  console.log(`tftp-loss: median time ours / tftpd-hpa per client = ${ratio}`);
} finally {
  await cleanup();
}
