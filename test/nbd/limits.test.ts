/**
 * What one client can make the server hold, over real sockets: reply bytes for a client that
 * never reads, connections per address, a handshake never finished, replies never taken. In each
 * case the other clients keep being served. Memory is measured with the server's own counter of
 * reply bytes held, never with RSS or timing.
 */
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { NbdConnectionEvent, NbdReadEvent, NbdThrottleEvent } from '../../server/nbd/server.ts';
import { RawClient, startServer, type ServerFixture } from './helpers.ts';
import { request } from './wire.ts';

const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

async function server(sizes: Record<string, number>, options: Parameters<typeof startServer>[1] = {}): Promise<ServerFixture> {
  const fx = await startServer(sizes, options);
  cleanup.push(() => fx.close());
  return fx;
}

async function client(port: number, localAddress?: string): Promise<RawClient> {
  const c = await RawClient.connect(port, '127.0.0.1', localAddress);
  cleanup.push(() => c.destroy());
  return c;
}

/** A promise for the first event that matches, from a list callbacks push into. */
function waitFor<T>(list: T[], match: (e: T) => boolean): Promise<T> {
  return new Promise((resolve) => {
    const found = list.find(match);
    if (found) return resolve(found);
    const push = list.push.bind(list);
    list.push = (...items: T[]) => {
      const n = push(...items);
      const hit = items.find(match);
      if (hit) resolve(hit);
      return n;
    };
  });
}

/**
 * Reads `count` simple replies of `length` bytes straight off the socket, hashing payloads as they
 * stream (a RawClient would copy 512 MiB around). Resolves with handle -> sha256 of the payload.
 */
function drainReplies(c: RawClient, count: number, length: number): Promise<Map<bigint, string>> {
  const out = new Map<bigint, string>();
  return new Promise((resolve, reject) => {
    let header = Buffer.alloc(0);
    let hash: ReturnType<typeof createHash> | null = null;
    let handle = 0n;
    let left = 0;
    c.socket.removeAllListeners('data');
    c.socket.on('data', (chunk: Buffer) => {
      while (chunk.length > 0) {
        if (!hash) {
          const need = 16 - header.length;
          header = Buffer.concat([header, chunk.subarray(0, need)]);
          chunk = chunk.subarray(need);
          if (header.length < 16) return;
          if (header.readUInt32BE(0) !== 0x67446698 || header.readUInt32BE(4) !== 0) return reject(new Error(`bad reply ${header.toString('hex')}`));
          handle = header.readBigUInt64BE(8);
          hash = createHash('sha256');
          left = length;
          header = Buffer.alloc(0);
        }
        const take = Math.min(left, chunk.length);
        hash.update(chunk.subarray(0, take));
        chunk = chunk.subarray(take);
        left -= take;
        if (left === 0) {
          out.set(handle, hash.digest('hex'));
          hash = null;
          if (out.size === count) resolve(out);
        }
      }
    });
    c.socket.resume();
  });
}

describe('nbd limits over real sockets', () => {
  it('a client sending 16 READs of 32 MiB and never reading makes the server hold one reply, not 512 MiB; others are served', async () => {
    const reads: NbdReadEvent[] = [];
    const throttles: NbdThrottleEvent[] = [];
    const fx = await server({ img: 32 * MiB, small: 65536 }, { onRead: (e) => reads.push(e), onThrottle: (e) => throttles.push(e) });
    const slow = await client(fx.port);
    await slow.open('img');
    slow.socket.pause(); // never reads its socket from here on
    const slowPort = slow.socket.localPort;
    slow.write(Buffer.concat(Array.from({ length: 16 }, (_, i) => request(0, BigInt(i), 0, 32 * MiB))));

    const throttled = await waitFor(throttles, (e) => e.client.port === slowPort);
    expect(throttled).toMatchObject({ export: 'img', heldBytes: 32 * MiB + 16, pendingReads: 15 });
    expect(reads.filter((r) => r.client.port === slowPort)).toHaveLength(1);
    expect(fx.server.heldBytes.now).toBe(32 * MiB + 16);
    // The read's slot is given back once its task settles (microtasks): then it holds no read slot either.
    await new Promise((r) => setImmediate(r));
    expect(fx.server.readStats).toEqual({ active: 0, queued: 0 });

    // Another client is served meanwhile.
    const other = await client(fx.port);
    await other.open('small');
    const r = await other.readAt(4096, 8192);
    expect(r.error).toBe(0);
    expect(r.data.equals(fx.files.get('small')!.subarray(4096, 12288))).toBe(true);

    // When the slow client reads at last, every reply arrives, right, one 32 MiB reply at a time.
    const hashes = await drainReplies(slow, 16, 32 * MiB);
    const want = sha256(fx.files.get('img')!);
    expect([...hashes.values()]).toEqual(Array(16).fill(want));
    expect(fx.server.heldBytes.peakPerConnection).toBe(32 * MiB + 16);
  });

  it('refuses the 9th connection from one address; another address and the first eight are still served', async () => {
    const events: NbdConnectionEvent[] = [];
    const fx = await server({ img: 65536 }, { onConnection: (e) => events.push(e) });
    const eight = [];
    for (let i = 0; i < 8; i++) {
      const c = await client(fx.port);
      await c.open('img');
      eight.push(c);
    }
    expect(fx.server.connectionsFrom('127.0.0.1')).toBe(8);
    const ninth = await client(fx.port);
    await ninth.closed;
    expect(events.filter((e) => e.event === 'refused')).toEqual([
      expect.objectContaining({ event: 'refused', reason: 'max-connections-per-address', client: expect.objectContaining({ address: '127.0.0.1' }) }),
    ]);

    const elsewhere = await client(fx.port, '127.0.0.2');
    await elsewhere.open('img');
    expect((await elsewhere.readAt(0, 4096)).data.equals(fx.files.get('img')!.subarray(0, 4096))).toBe(true);
    for (const c of eight) expect((await c.readAt(100, 10)).error).toBe(0);

    // One of the eight leaves: its slot is free again.
    const left = waitFor(events, (e) => e.event === 'close');
    eight[0]!.destroy();
    await left;
    const again = await client(fx.port);
    await again.open('img');
  });

  it('drops a client that never finishes the handshake while the others keep reading', async () => {
    const events: NbdConnectionEvent[] = [];
    const fx = await server({ img: 65536 }, { handshakeTimeoutMs: 300, onConnection: (e) => events.push(e) });
    const reader = await client(fx.port);
    await reader.open('img');
    const staller = await client(fx.port);
    await staller.read(18); // the greeting, then silence
    const dropped = waitFor(events, (e) => e.event === 'close' && e.export === null);
    // The reader keeps going until the staller is gone, and after.
    let served = 0;
    let done = false;
    void dropped.then(() => (done = true));
    while (!done) {
      expect((await reader.readAt((served * 4096) % 61440, 4096)).error).toBe(0);
      served++;
    }
    expect(await dropped).toMatchObject({ reason: 'handshake-timeout' });
    await staller.closed;
    expect((await reader.readAt(0, 4096)).error).toBe(0);
    expect(served).toBeGreaterThan(0);
  });

  it('ends a connection whose client stopped taking its replies; an idle client after GO is never cut', async () => {
    const events: NbdConnectionEvent[] = [];
    const fx = await server({ img: 32 * MiB }, { stallTimeoutMs: 400, onConnection: (e) => events.push(e) });
    const idle = await client(fx.port);
    await idle.open('img');
    const stalled = await client(fx.port);
    await stalled.open('img');
    stalled.socket.pause();
    const stalledPort = stalled.socket.localPort;
    const cut = waitFor(events, (e) => e.event === 'close' && e.client.port === stalledPort);
    stalled.write(request(0, 1n, 0, 32 * MiB));
    expect(await cut).toMatchObject({ reason: 'write-stalled', export: 'img' });
    expect(fx.server.heldBytes.now).toBe(0);
    // The idle client was quiet all along (longer than the stall timeout) and is still connected and served.
    expect(events.filter((e) => e.event === 'close' && e.client.port === idle.socket.localPort)).toEqual([]);
    expect((await idle.readAt(0, 4096)).data.equals(fx.files.get('img')!.subarray(0, 4096))).toBe(true);
  });
});
