import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePacket, serializePacket, type TftpPacket } from '../../server/tftp/codec.ts';
import { memorySource } from '../../server/tftp/files.ts';
import { TftpServer } from '../../server/tftp/server.ts';
import { defaultSessionLimits, ReadSession } from '../../server/tftp/session.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { RawPeer, runClient, sha256, sha256File } from './helpers.ts';

/** Deterministic PRNG (mulberry32) so a failure can be replayed. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  return { next, int, bytes, pick: <T>(xs: readonly T[]) => xs[int(xs.length)]! };
}

const seeds: TftpPacket[] = [
  { op: 'RRQ', filename: 'file.bin', mode: 'octet', options: [{ name: 'blksize', value: '1468' }, { name: 'tsize', value: '0' }, { name: 'windowsize', value: '8' }, { name: 'timeout', value: '1' }] },
  { op: 'RRQ', filename: 'file.bin', mode: 'octet', options: [] },
  { op: 'WRQ', filename: 'x', mode: 'octet', options: [] },
  { op: 'DATA', block: 1, data: Buffer.from('hello') },
  { op: 'ACK', block: 0 },
  { op: 'ACK', block: 1 },
  { op: 'ERROR', code: 8, message: 'User aborted download' },
  { op: 'OACK', options: [{ name: 'blksize', value: '512' }] },
];

function mutate(rand: ReturnType<typeof prng>, input: Buffer): Buffer {
  let b = Buffer.from(input);
  const rounds = 1 + rand.int(4);
  for (let i = 0; i < rounds; i++) {
    switch (rand.int(6)) {
      case 0: // bit flip
        if (b.length) b[rand.int(b.length)]! ^= 1 << rand.int(8);
        break;
      case 1: // truncate
        b = b.subarray(0, rand.int(b.length + 1));
        break;
      case 2: // random byte
        if (b.length) b[rand.int(b.length)] = rand.int(256);
        break;
      case 3: // insert NULs or junk
        b = Buffer.concat([b.subarray(0, rand.int(b.length + 1)), rand.int(2) ? Buffer.alloc(1 + rand.int(4)) : rand.bytes(1 + rand.int(8)), b]);
        break;
      case 4: // drop the terminating NUL
        if (b.length && b[b.length - 1] === 0) b = b.subarray(0, b.length - 1);
        break;
      case 5: // random opcode
        if (b.length >= 2) b.writeUInt16BE(rand.int(9), 0);
        break;
    }
  }
  return b;
}

function fuzzPackets(seed: number, count: number): Buffer[] {
  const rand = prng(seed);
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    if (rand.int(3) === 0) out.push(rand.bytes(rand.int(600)));
    else out.push(mutate(rand, serializePacket(rand.pick(seeds))));
  }
  return out;
}

describe('fuzz: codec and session', () => {
  it('parsePacket never throws on 30000 random and mutated packets; what parses re-serializes', () => {
    let parsed = 0;
    for (const bytes of fuzzPackets(1, 30_000)) {
      const r = parsePacket(bytes);
      if (r.ok) {
        parsed++;
        expect(() => serializePacket(r.packet)).not.toThrow();
      } else {
        expect(typeof r.error.kind).toBe('string');
      }
    }
    // The mutations must exercise both paths, or the fuzzer is not fuzzing.
    expect(parsed).toBeGreaterThan(1000);
    expect(parsed).toBeLessThan(30_000);
  });

  it('a session fed random parsed packets and timeouts only ever asks for blocks inside the file', () => {
    const rand = prng(2);
    const packets = fuzzPackets(3, 20_000)
      .map((b) => parsePacket(b))
      .flatMap((r) => (r.ok ? [r.packet] : []));
    for (let run = 0; run < 50; run++) {
      const size = rand.int(200_000);
      const options = [{ name: 'blksize', value: String(8 + rand.int(2000)) }, { name: 'windowsize', value: String(1 + rand.int(20)) }];
      const s = new ReadSession({ op: 'RRQ', filename: 'f', mode: 'octet', options }, size, { ...defaultSessionLimits, maxRetries: 1000 });
      const check = (actions: ReturnType<ReadSession['start']>) => {
        for (const a of actions) {
          if (a.kind !== 'send-data') continue;
          for (const b of a.blocks) {
            expect(b.index).toBeGreaterThanOrEqual(1);
            expect(b.index).toBeLessThanOrEqual(s.lastBlock);
            expect(b.offset + b.length).toBeLessThanOrEqual(size);
            expect(b.wire).toBe(b.index & 0xffff);
          }
        }
      };
      check(s.start());
      for (let i = 0; i < 400 && !s.finished; i++) {
        const p = rand.int(5) === 0 ? ({ op: 'ACK', block: rand.int(65536) } as const) : rand.pick(packets);
        check(rand.int(10) === 0 ? s.timeout() : s.receive(p));
      }
    }
  });
});

describe('fuzz: running server', () => {
  let server: TftpServer;
  let port: number;
  let out: string;
  const content = randomBytes(300_000);
  // Errors the server logs: a fuzzed client must never cause one (warnings for ended transfers are fine).
  const errors: string[] = [];
  const log = pino({ level: 'error' }, { write: (line: string) => void errors.push(line) });

  beforeAll(async () => {
    out = await mkdtemp(join(tmpdir(), 'tftp-fuzz-'));
    server = new TftpServer({
      host: '127.0.0.1',
      port: 0,
      source: memorySource({ 'file.bin': content, x: Buffer.from('x') }),
      maxTransfers: 16,
      // maxTimeoutMs below 1 s: fuzzed `timeout` options are refused, so fuzz transfers die in 150 ms.
      limits: { timeoutMs: 50, maxTimeoutMs: 100, maxRetries: 1 },
      log,
    });
    port = (await server.start()).port;
  });
  afterAll(async () => {
    await server?.stop();
    await rm(out, { recursive: true, force: true });
  });

  it('survives thousands of random packets on the request port and on transfer ports, then still serves', async () => {
    const fuzzer = await RawPeer.open();
    const client = await RawPeer.open();
    try {
      // A live transfer whose port also gets fuzzed, by its own client and by a stranger.
      await client.send(seeds[1]!, port);
      const first = await client.next();
      expect(first?.packet.op).toBe('DATA');
      const transferPort = first!.from.port;

      const packets = fuzzPackets(4, 4000);
      for (let i = 0; i < packets.length; i++) {
        await fuzzer.send(packets[i]!, i % 4 === 0 ? transferPort : port);
        if (i % 8 === 0) await client.send(packets[i]!, transferPort);
      }
      // Let fuzz-started transfers time out (50 ms, one retry).
      await waitUntil(() => server.activeTransfers === 0, 'fuzz-started transfers ended');
      expect(fuzzer.malformed).toEqual([]);
      expect(errors).toEqual([]);

      const file = join(out, 'after-fuzz');
      const r = await runClient('curl', ['-sS', '-m', '30', '--tftp-blksize', '1024', '-o', file, `tftp://127.0.0.1:${port}/file.bin`]);
      expect(r.stderr).toBe('');
      expect(await sha256File(file)).toBe(sha256(content));
    } finally {
      fuzzer.close();
      client.close();
    }
  }, 60_000);
});
