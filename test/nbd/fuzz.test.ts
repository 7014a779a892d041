/**
 * Thousands of random and mutated sessions against a running server (deterministic seed).
 * Afterwards the server must have closed every one of them and still serve a real client.
 */
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ClientStreamParser, NbdProtocolError } from '../../server/nbd/codec.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { startServer, type ServerFixture } from './helpers.ts';
import { clientFlags, infoData, option, request } from './wire.ts';

const run = promisify(execFile);
const SESSIONS = 2000;
const BATCH = 100;

/** xorshift32: the same sessions every run, so a failure can be replayed. */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  return {
    int: (n: number) => next() % n,
    bytes: (n: number) => {
      const b = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) b[i] = next() & 0xff;
      return b;
    },
    pick: <T>(xs: readonly T[]) => xs[next() % xs.length]!,
  };
}

type Rng = ReturnType<typeof rng>;

function validSession(r: Rng): Buffer {
  const parts: Buffer[] = [clientFlags(r.pick([0, 1, 2, 3]))];
  const names = ['img', '', 'nope', 'img\u00e9', 'x'.repeat(300)];
  for (let i = r.int(4); i > 0; i--) parts.push(option(r.pick([3, 5, 6, 8, 9, 10, 11, 0x7fff]), r.int(3) === 0 ? r.bytes(r.int(40)) : Buffer.alloc(0)));
  if (r.int(2)) parts.push(option(r.pick([6, 7]), infoData(r.pick(names), Array.from({ length: r.int(4) }, () => r.int(5)))));
  parts.push(r.int(3) === 0 ? option(1, Buffer.from(r.pick(names))) : option(7, infoData('img', [3])));
  const tail = r.int(4) === 0 ? [] : [request(2, 0n, 0, 0)];
  for (let i = r.int(12); i > 0; i--) {
    const type = r.pick([0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 0xffff]);
    const offset = r.pick([0n, BigInt(r.int(60_000)), BigInt(r.int(70_000)), 0xffffffffffffffffn, BigInt(65536 - r.int(10))]);
    const length = r.pick([0, r.int(4096), r.int(4096), r.int(70_000), 0xffffffff, 1]);
    parts.push(request(type, BigInt(r.int(1 << 30)), offset, type === 1 ? Math.min(length, 100_000) : length, r.int(8), type === 1 ? Buffer.alloc(Math.min(length, 100_000), 0x5a) : undefined));
  }
  return Buffer.concat([...parts, ...tail]);
}

function mutate(r: Rng, b: Buffer): Buffer {
  const out = Buffer.from(b);
  for (let i = 1 + r.int(6); i > 0 && out.length > 0; i--) {
    const at = r.int(out.length);
    switch (r.int(4)) {
      case 0:
        out[at] = r.int(256);
        break;
      case 1:
        out[at] = out[at]! ^ (1 << r.int(8));
        break;
      case 2:
        out.writeUInt32BE(r.pick([0, 0xffffffff, 0x10000, 4097, r.int(1 << 31)]), Math.min(at, Math.max(0, out.length - 4)));
        break;
      case 3:
        return Buffer.concat([out.subarray(0, at), r.bytes(r.int(20)), out.subarray(at + r.int(20))]);
    }
  }
  return out;
}

function session(r: Rng): Buffer {
  switch (r.int(5)) {
    case 0:
      return r.bytes(r.int(200));
    case 1:
      return validSession(r).subarray(0, r.int(400));
    case 2:
      return validSession(r);
    default:
      return mutate(r, validSession(r));
  }
}

/**
 * Sends the bytes, half-closes, and waits for the server to close: it answers what it got, then ends
 * (DISC, a protocol error, or the end of input). No timer: a slow machine only makes it slower.
 */
function play(port: number, bytes: Buffer): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => socket.end(bytes));
    socket.on('data', () => undefined);
    socket.on('error', () => undefined);
    socket.on('close', () => resolve());
  });
}

let fx: ServerFixture;
const seen = { opened: 0, reads: 0, closeReasons: new Map<string, number>() };
beforeAll(async () => {
  fx = await startServer(
    { img: 65536 },
    {
      maxConnections: 1000,
      // Every session comes from 127.0.0.1, many at once.
      maxConnectionsPerAddress: 1000,
      onConnection: (e) => {
        if (e.event === 'open') seen.opened++;
        if (e.event === 'close') seen.closeReasons.set(e.reason ?? '', (seen.closeReasons.get(e.reason ?? '') ?? 0) + 1);
      },
      onRead: () => seen.reads++,
    },
  );
});
afterAll(async () => {
  await fx?.close();
});

it('the parser only ever returns messages, null or a typed error on random input', () => {
  const r = rng(7);
  for (let i = 0; i < 5000; i++) {
    const p = new ClientStreamParser();
    const bytes = session(r);
    try {
      for (let at = 0; at < bytes.length; ) {
        const n = 1 + r.int(64);
        p.push(bytes.subarray(at, at + n));
        at += n;
        for (let m = p.next(); m !== null; m = p.next()) if (m.kind === 'option' && r.int(2)) p.enterTransmission();
      }
    } catch (err) {
      expect(err).toBeInstanceOf(NbdProtocolError);
    }
  }
});

it(`survives ${SESSIONS} random and mutated sessions and still serves nbdinfo`, { timeout: 120_000 }, async () => {
  const r = rng(12345);
  for (let i = 0; i < SESSIONS; i += BATCH) {
    await Promise.all(Array.from({ length: BATCH }, () => play(fx.port, session(r))));
  }
  await waitUntil(() => fx.server.connectionCount === 0, 'every fuzz connection closed');
  expect(fx.server.readStats).toEqual({ active: 0, queued: 0 });
  // The corpus reaches every stage: exports opened, reads served, and each kind of protocol error.
  expect(seen.opened).toBeGreaterThan(SESSIONS / 10);
  expect(seen.reads).toBeGreaterThan(SESSIONS / 10);
  for (const reason of ['protocol-error:bad-option-magic', 'protocol-error:bad-request-magic', 'protocol-error:bad-client-flags', 'unknown-export', 'client-disc', 'client-eof']) {
    expect(seen.closeReasons.get(reason) ?? 0, `${reason} in ${JSON.stringify([...seen.closeReasons])}`).toBeGreaterThan(0);
  }
  const { stdout } = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${fx.port}/img`], { timeout: 20_000 });
  expect(stdout.trim()).toBe('65536');
});
