import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSegment, type Segment } from '../lab/netns.ts';
import { sha256, sha256File } from './helpers.ts';

const run = promisify(execFile);
const childScript = join(import.meta.dirname, 'serve-child.ts');

/**
 * Random packet loss: server and clients run inside a private network namespace whose INPUT
 * chain drops 5% of UDP packets in both directions (`tc netem` is not in this kernel).
 */
describe('tftp under 5% random packet loss (network namespace)', () => {
  let segment: Segment | undefined;
  let dir: string;
  let port = 0;
  const lines: Record<string, unknown>[] = [];
  const content = randomBytes(600_000);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tftp-loss-'));
    await writeFile(join(dir, 'file.bin'), content);
    await writeFile(join(dir, 'small.bin'), content.subarray(0, 150_000));
    segment = await createSegment();
    await segment.exec('iptables', ['-A', 'INPUT', '-p', 'udp', '-m', 'statistic', '--mode', 'random', '--probability', '0.05', '-j', 'DROP']);
    const child = segment.spawn('node', ['--import', 'tsx', childScript, dir, segment.serverIp, '16969', '100'], { cwd: process.cwd() });
    const ready = new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`server child exited with ${code}`)));
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const msg = JSON.parse(line) as Record<string, unknown>;
        lines.push(msg);
        if ('ready' in msg) {
          port = (msg.ready as { port: number }).port;
          resolve();
        }
      });
    });
    await ready;
  }, 60_000);

  afterAll(async () => {
    const ns = segment?.ns;
    await segment?.destroy();
    if (ns) expect((await run('ip', ['netns', 'list'])).stdout).not.toContain(ns);
    await rm(dir, { recursive: true, force: true });
  });

  it('curl (lockstep) and atftp (windowsize 8) still complete byte-identical', async () => {
    const s = segment!;
    // curl always negotiates a `timeout` of >= 1 s, which we honour (RFC 2349): every lost packet
    // would then cost seconds. Without options the server's own 100 ms timer drives recovery.
    const curlOut = join(dir, 'curl.out');
    await s.exec('curl', ['-sS', '-m', '90', '--tftp-no-options', '-o', curlOut, `tftp://${s.serverIp}:${port}/small.bin`], { timeoutMs: 100_000 });
    expect(await sha256File(curlOut)).toBe(sha256(content.subarray(0, 150_000)));

    const atftpOut = join(dir, 'atftp.out');
    await s.exec('atftp', ['--option', 'windowsize 8', '--option', 'blksize 1468', '-g', '-r', 'file.bin', '-l', atftpOut, s.serverIp, String(port)], {
      timeoutMs: 100_000,
    });
    expect(await sha256File(atftpOut)).toBe(sha256(content));

    // The rule really dropped packets: otherwise this test proved nothing about loss.
    const { stdout } = await s.exec('iptables', ['-L', 'INPUT', '-v', '-n', '-x']);
    const dropped = Number(/^\s*(\d+)\s+\d+\s+DROP/m.exec(stdout)?.[1] ?? 0);
    expect(dropped).toBeGreaterThan(0);
    // Each transfer is complete on the server's side too, unless only the client's final ACK was
    // lost (the client had everything and left): then all but the last block is acknowledged.
    const transfers = lines.flatMap((l) => ('transfer' in l ? [l.transfer as { path: string; outcome: string; bytes: number }] : []));
    expect(transfers.map((t) => t.path)).toEqual(['small.bin', 'file.bin']);
    for (const t of transfers) {
      const size = t.path === 'small.bin' ? 150_000 : content.length;
      const blksize = t.path === 'small.bin' ? 512 : 1468;
      if (t.outcome !== 'complete') expect(t.bytes).toBe(Math.floor(size / blksize) * blksize);
    }
  }, 200_000);
});
