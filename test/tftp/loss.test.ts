import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createSegment, type Segment } from '../lab/netns.ts';
import { sha256, sha256File } from './helpers.ts';

const run = promisify(execFile);
const childScript = join(import.meta.dirname, 'serve-child.ts');

const OP_DATA = 3;
const OP_ACK = 4;
const OP_OACK = 6;

/** One TFTP packet to drop: the first one of its kind on the wire, its retransmissions pass. */
interface Drop {
  op: typeof OP_DATA | typeof OP_ACK;
  block: number;
}

interface TransferEvent {
  path: string;
  outcome: string;
  bytes: number;
}

/**
 * Packet loss, chosen packet by packet: server and clients run inside a private network
 * namespace, and each case installs iptables rules that drop exactly the packets it names
 * (the first DATA or ACK of a block number, matched on the UDP payload with `u32`), so every run
 * exercises the same recovery paths. Random loss lives in bench/tftp-loss.ts, not here.
 */
describe('tftp with chosen packets dropped (network namespace)', () => {
  let segment: Segment | undefined;
  let dir: string;
  let port = 0;
  const transfers: TransferEvent[] = [];
  let transferArrived: () => void = () => undefined;
  const content = randomBytes(600_000);
  const small = content.subarray(0, 150_000);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tftp-loss-'));
    await writeFile(join(dir, 'file.bin'), content);
    await writeFile(join(dir, 'small.bin'), small);
    segment = await createSegment();
    // 100 ms first timeout, backoff capped at 1 s: curl's `timeout` option (5 s, as long as its
    // own re-ACK timer) is above the cap and refused, so the server's timer drives every recovery.
    const child = segment.spawn('node', ['--import', 'tsx', childScript, dir, segment.serverIp, '16969', '100', '1000'], { cwd: process.cwd() });
    await new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`server child exited with ${code}`)));
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const msg = JSON.parse(line) as { ready?: { port: number }; transfer?: TransferEvent };
        if (msg.ready) {
          port = msg.ready.port;
          resolve();
        }
        if (msg.transfer) {
          transfers.push(msg.transfer);
          transferArrived();
        }
      });
    });
  }, 60_000);

  afterAll(async () => {
    const ns = segment?.ns;
    await segment?.destroy();
    if (ns) expect((await run('ip', ['netns', 'list'])).stdout).not.toContain(ns);
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(async () => {
    await segment!.exec('iptables', ['-F', 'INPUT']);
    transfers.length = 0;
  });

  /** Client and server share the namespace: every packet of both directions passes its INPUT chain once. */
  async function dropOnce(drops: Drop[]): Promise<void> {
    for (const { op, block } of drops) {
      const head = ((op << 16) | block).toString(16).padStart(8, '0');
      // u32: the first 4 bytes of the UDP payload (IP header length + 8) are opcode and block number.
      // statistic nth with a huge period matches only the first packet that reaches it.
      await segment!.exec('iptables', [
        '-A', 'INPUT', '-p', 'udp', '-m', 'u32', '--u32', `0>>22&0x3C@8=0x${head}`,
        '-m', 'statistic', '--mode', 'nth', '--every', '1000000', '--packet', '0', '-j', 'DROP',
      ]);
    }
  }

  /** Packets each rule dropped, in rule order. */
  async function dropped(): Promise<number[]> {
    const { stdout } = await segment!.exec('iptables', ['-L', 'INPUT', '-v', '-n', '-x']);
    return [...stdout.matchAll(/^\s*(\d+)\s+\d+\s+DROP/gm)].map((m) => Number(m[1]));
  }

  /** Counts the packets with this opcode that pass (a rule without a target only counts). */
  async function countOpcode(op: number): Promise<() => Promise<number>> {
    const match = `0>>22&0x3C@8>>16=0x${op.toString(16)}`;
    await segment!.exec('iptables', ['-A', 'INPUT', '-p', 'udp', '-m', 'u32', '--u32', match]);
    return async () => {
      const { stdout } = await segment!.exec('iptables', ['-L', 'INPUT', '-v', '-n', '-x']);
      const line = stdout.split('\n').find((l) => l.includes(`>>0x10=0x${op.toString(16)}"`) && !l.includes('DROP'));
      return Number(line?.trim().split(/\s+/)[0]);
    };
  }

  /** The server's record of the transfer (it arrives when the server's session ends, maybe after the client left). */
  async function serverTransfer(path: string): Promise<TransferEvent> {
    for (;;) {
      const found = transfers.find((t) => t.path === path);
      if (found) return found;
      await new Promise<void>((resolve) => (transferArrived = resolve));
    }
  }

  it('curl in lockstep recovers a lost DATA, a lost ACK and a lost last DATA', async () => {
    const s = segment!;
    // 150,000 bytes in 512-byte blocks: 293 blocks, the last one short.
    await dropOnce([
      { op: OP_DATA, block: 20 },
      { op: OP_ACK, block: 50 },
      { op: OP_DATA, block: 293 },
    ]);
    const out = join(dir, 'curl-lockstep.out');
    // Without options the server's own 100 ms timer drives recovery.
    await s.exec('curl', ['-sS', '-m', '60', '--tftp-no-options', '-o', out, `tftp://${s.serverIp}:${port}/small.bin`], { timeoutMs: 70_000 });
    expect(await sha256File(out)).toBe(sha256(small));
    expect(await dropped()).toEqual([1, 1, 1]);
    expect(await serverTransfer('small.bin')).toMatchObject({ outcome: 'complete', bytes: small.length });
  }, 90_000);

  it('atftp with windowsize 8 recovers a lost window ACK, a DATA lost mid-window and a lost DATA in the last window', async () => {
    const s = segment!;
    // 600,000 bytes in 1468-byte blocks: 409 blocks in windows of 8 (1-8, 9-16, ...) until the
    // first loss: the ACK of 24 ends a window, 37 sits inside the window 33-40, and 405 is in
    // the last window whatever the windows look like after the recoveries.
    await dropOnce([
      { op: OP_ACK, block: 24 },
      { op: OP_DATA, block: 37 },
      { op: OP_DATA, block: 405 },
    ]);
    const out = join(dir, 'atftp.out');
    await s.exec('atftp', ['--option', 'windowsize 8', '--option', 'blksize 1468', '-g', '-r', 'file.bin', '-l', out, s.serverIp, String(port)], {
      timeoutMs: 70_000,
    });
    expect(await sha256File(out)).toBe(sha256(content));
    expect(await dropped()).toEqual([1, 1, 1]);
    expect(await serverTransfer('file.bin')).toMatchObject({ outcome: 'complete', bytes: content.length });
  }, 90_000);

  it("a lost ACK of the OACK: the server sends the OACK again and curl goes on", async () => {
    // RFC 2347: the client acknowledges the OACK with ACK 0; when that ACK is lost the server
    // retransmits the OACK. atftp 0.8 cannot recover from this case (it aborts with
    // "unexpected OACK" on the retransmission), so it is covered with curl, which can.
    const s = segment!;
    const oacks = await countOpcode(OP_OACK);
    await dropOnce([{ op: OP_ACK, block: 0 }]);
    const out = join(dir, 'curl-oack.out');
    await s.exec('curl', ['-sS', '-m', '60', '--tftp-blksize', '1468', '-o', out, `tftp://${s.serverIp}:${port}/file.bin`], { timeoutMs: 70_000 });
    expect(await sha256File(out)).toBe(sha256(content));
    expect(await dropped()).toEqual([1]);
    // The server's retransmission (after 100 ms) is what recovered, not curl re-sending ACK 0
    // on its own 5 s timer: the OACK went out again.
    expect(await oacks()).toBeGreaterThanOrEqual(2);
    expect(await serverTransfer('file.bin')).toMatchObject({ outcome: 'complete', bytes: content.length });
  }, 90_000);

  it("the client's final ACK lost: the client has the whole file, the server gives up on the last block only", async () => {
    const s = segment!;
    await dropOnce([{ op: OP_ACK, block: 293 }]);
    const out = join(dir, 'curl-final.out');
    await s.exec('curl', ['-sS', '-m', '60', '--tftp-no-options', '-o', out, `tftp://${s.serverIp}:${port}/small.bin`], { timeoutMs: 70_000 });
    expect(await sha256File(out)).toBe(sha256(small));
    expect(await dropped()).toEqual([1]);
    // The server retransmits the last block until the client's closed port answers (ICMP) or
    // its retries run out: either way all but the last block were acknowledged.
    const transfer = await serverTransfer('small.bin');
    expect(transfer.outcome).not.toBe('complete');
    expect(transfer.bytes).toBe(292 * 512);
  }, 90_000);
});
