import { rename, unlink, writeFile } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NbdConnectionEvent, NbdReadEvent } from '../../server/nbd/server.ts';
import { RawClient, startServer, type ServerFixture } from './helpers.ts';
import { clientFlags, hex, infoData, option, request } from './wire.ts';

const ACK = 1;
const SERVER = 2;
const ERR_UNSUP = 0x80000001;
const ERR_INVALID = 0x80000003;
const ERR_UNKNOWN = 0x80000006;
const EPERM = 1;
const EINVAL = 22;
const SIZE = 300_001; // not a multiple of anything, so the tail is exercised

let fx: ServerFixture;
const clients: RawClient[] = [];
async function client(): Promise<RawClient> {
  const c = await RawClient.connect(fx.port);
  clients.push(c);
  return c;
}

beforeAll(async () => {
  fx = await startServer({ img: SIZE, other: 4096 });
});
afterEach(() => {
  for (const c of clients.splice(0)) c.destroy();
});
afterAll(async () => {
  await fx?.close();
});

describe('nbd server: handshake', () => {
  it('offers FIXED_NEWSTYLE|NO_ZEROES', async () => {
    const c = await client();
    expect(await c.handshake()).toBe(3);
  });

  it('GO answers NBD_INFO_EXPORT with the size and read-only flags, block sizes when asked', async () => {
    const c = await client();
    await c.handshake();
    const r = await c.info(7, 'img', [3]);
    expect(r.type).toBe(ACK);
    expect(r.infos[0]).toEqual(Buffer.concat([hex('0000'), hex(SIZE.toString(16).padStart(16, '0')), hex('0103')]));
    expect(r.infos[1]).toEqual(hex('0003 00000001 00001000 02000000'));
    expect((await c.readAt(0, 16)).data).toEqual(fx.files.get('img')!.subarray(0, 16));
  });

  it('INFO does not end the handshake: options still work after it, then GO', async () => {
    const c = await client();
    await c.handshake();
    expect((await c.info(6, 'other')).type).toBe(ACK);
    c.write(option(3));
    expect((await c.optionReply()).type).toBe(SERVER);
    expect((await c.optionReply()).type).toBe(SERVER);
    expect((await c.optionReply()).type).toBe(ACK);
    expect((await c.info(7, 'other')).type).toBe(ACK);
    expect((await c.readAt(4000, 96)).data).toEqual(fx.files.get('other')!.subarray(4000));
  });

  it('an unknown export gets NBD_REP_ERR_UNKNOWN and the client may try again', async () => {
    const c = await client();
    await c.handshake();
    const bad = await c.info(7, 'nope');
    expect(bad).toEqual({ type: ERR_UNKNOWN, infos: [] });
    expect((await c.info(6, 'nope')).type).toBe(ERR_UNKNOWN);
    expect((await c.info(7, 'img')).type).toBe(ACK);
  });

  it('LIST names every export; LIST with data is invalid', async () => {
    const c = await client();
    await c.handshake();
    c.write(option(3));
    const names: string[] = [];
    for (let r = await c.optionReply(); r.type === SERVER; r = await c.optionReply()) {
      names.push(r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
    }
    expect(names).toEqual(['img', 'other']);
    c.write(option(3, Buffer.from('x')));
    expect((await c.optionReply()).type).toBe(ERR_INVALID);
  });

  it('refuses STRUCTURED_REPLY, STARTTLS and unknown options with ERR_UNSUP, malformed GO with ERR_INVALID', async () => {
    const c = await client();
    await c.handshake();
    for (const opt of [8, 5, 0x1234, 0xffffffff]) {
      c.write(option(opt));
      expect(await c.optionReply()).toEqual({ option: opt, type: ERR_UNSUP, data: Buffer.alloc(0) });
    }
    c.write(option(7, hex('00000009 696d67 0000')));
    expect((await c.optionReply()).type).toBe(ERR_INVALID);
    expect((await c.info(7, 'img')).type).toBe(ACK);
  });

  it('ABORT is acknowledged and the connection closes', async () => {
    const c = await client();
    await c.handshake();
    c.write(option(2));
    expect((await c.optionReply()).type).toBe(ACK);
    await c.closed;
  });

  it('EXPORT_NAME: size and flags, with the 124 zeroes only when NO_ZEROES was not agreed', async () => {
    for (const flags of [3, 1]) {
      const c = await client();
      await c.handshake(flags);
      c.write(option(1, Buffer.from('img')));
      const reply = await c.read(flags === 3 ? 10 : 134);
      expect(reply.subarray(0, 10)).toEqual(Buffer.concat([hex(SIZE.toString(16).padStart(16, '0')), hex('0103')]));
      expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
      expect((await c.readAt(SIZE - 5, 5)).data).toEqual(fx.files.get('img')!.subarray(SIZE - 5));
    }
  });

  it('EXPORT_NAME of an unknown export ends the session (the option cannot carry an error)', async () => {
    const c = await client();
    await c.handshake();
    c.write(option(1, Buffer.from('nope')));
    await c.closed;
  });
});

describe('nbd server: transmission', () => {
  it('reads any range, several in flight, each reply matched by handle', async () => {
    const c = await client();
    await c.open('img');
    const data = fx.files.get('img')!;
    const ranges = Array.from({ length: 40 }, (_, i) => ({ handle: BigInt(1000 + i), offset: (i * 7919) % (SIZE - 9000), length: 1 + ((i * 3571) % 9000) }));
    ranges.push({ handle: 5n, offset: 0, length: SIZE });
    c.write(Buffer.concat(ranges.map((r) => request(0, r.handle, r.offset, r.length))));
    const byHandle = new Map(ranges.map((r) => [r.handle, r]));
    for (let i = 0; i < ranges.length; i++) {
      const reply = await c.simpleReply((h) => byHandle.get(h)!.length);
      const r = byHandle.get(reply.handle)!;
      expect(reply.error).toBe(0);
      expect(reply.data.equals(data.subarray(r.offset, r.offset + r.length)), `handle ${r.handle}`).toBe(true);
      byHandle.delete(reply.handle);
    }
    expect(byHandle.size).toBe(0);
  });

  it('refuses reads past the end or over 32 MiB with EINVAL and keeps serving', async () => {
    const c = await client();
    await c.open('img');
    expect((await c.readAt(SIZE - 4, 5)).error).toBe(EINVAL);
    expect((await c.readAt(SIZE, 1)).error).toBe(EINVAL);
    c.write(request(0, 9n, 0x7fffffffffffffffn, 512));
    expect(await c.simpleReply()).toMatchObject({ error: EINVAL, handle: 9n });
    c.write(request(0, 10n, 0xffffffffffffff00n, 0x200));
    expect((await c.simpleReply()).error).toBe(EINVAL);
    c.write(request(0, 11n, 0, 32 * 1024 * 1024 + 1));
    expect((await c.simpleReply()).error).toBe(EINVAL);
    expect((await c.readAt(SIZE - 4, 4)).data).toEqual(fx.files.get('img')!.subarray(SIZE - 4));
    expect((await c.readAt(7, 0)).error).toBe(0);
  });

  it('refuses writes, trims and write-zeroes with EPERM (skipping the write payload); flush succeeds; unknown commands get EINVAL', async () => {
    const c = await client();
    await c.open('img');
    const payload = Buffer.alloc(70_000, 0x55);
    c.write(request(1, 1n, 0, payload.length, 0, payload));
    expect(await c.simpleReply()).toMatchObject({ error: EPERM, handle: 1n });
    c.write(request(4, 2n, 0, 4096));
    expect(await c.simpleReply()).toMatchObject({ error: EPERM, handle: 2n });
    c.write(request(6, 3n, 0, 4096));
    expect(await c.simpleReply()).toMatchObject({ error: EPERM, handle: 3n });
    c.write(request(3, 4n, 0, 0));
    expect(await c.simpleReply()).toMatchObject({ error: 0, handle: 4n });
    for (const type of [5, 7, 99]) {
      c.write(request(type, 6n, 0, 512));
      expect(await c.simpleReply()).toMatchObject({ error: EINVAL, handle: 6n });
    }
    expect((await c.readAt(0, 100)).data).toEqual(fx.files.get('img')!.subarray(0, 100));
  });

  it('DISC: answers what is in flight, then closes', async () => {
    const c = await client();
    await c.open('img');
    c.write(Buffer.concat([request(0, 1n, 0, SIZE), request(0, 2n, 100, 100), request(2, 3n, 0, 0), request(0, 4n, 0, 1)]));
    const handles = [(await c.simpleReply((h) => (h === 1n ? SIZE : 100))).handle];
    handles.push((await c.simpleReply((h) => (h === 1n ? SIZE : 100))).handle);
    expect(handles.sort()).toEqual([1n, 2n]);
    await c.closed;
  });

  it('a connected client keeps reading its export after the file is deleted or replaced', async () => {
    const c = await client();
    await c.open('other');
    const original = fx.files.get('other')!;
    await unlink(fx.path('other'));
    expect((await c.readAt(0, 4096)).data).toEqual(original);
    await writeFile(fx.path('other') + '.new', Buffer.alloc(4096, 1));
    await rename(fx.path('other') + '.new', fx.path('other'));
    expect((await c.readAt(0, 4096)).data).toEqual(original);
    // a new client gets the new file
    const d = await client();
    await d.open('other');
    expect((await d.readAt(0, 4096)).data).toEqual(Buffer.alloc(4096, 1));
    await unlink(fx.path('other'));
    const e = await client();
    await e.handshake();
    expect((await e.info(7, 'other')).type).toBe(ERR_UNKNOWN);
    expect((await c.readAt(10, 10)).data).toEqual(original.subarray(10, 20));
    await writeFile(fx.path('other'), original);
  });
});

describe('nbd server: bad input ends only that connection', () => {
  const cases: { name: string; bytes: Buffer; inTransmission?: boolean }[] = [
    { name: 'unknown client flags', bytes: clientFlags(0x80) },
    { name: 'garbage instead of an option', bytes: Buffer.concat([clientFlags(3), Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')]) },
    { name: 'an option longer than 64 KiB', bytes: Buffer.concat([clientFlags(3), option(7, Buffer.alloc(0), 70_000)]) },
    { name: 'a request with a bad magic', bytes: hex('deadbeef'), inTransmission: true },
    { name: 'a write over 32 MiB', bytes: request(1, 1n, 0, 33 * 1024 * 1024), inTransmission: true },
  ];
  for (const k of cases) {
    it(`disconnects on ${k.name}`, async () => {
      const c = await client();
      if (k.inTransmission) {
        await c.open('img');
        c.write(Buffer.concat([k.bytes, Buffer.alloc(28)]));
      } else {
        await c.read(18);
        c.write(k.bytes);
      }
      await c.closed;
      const d = await client();
      await d.open('img');
      expect((await d.readAt(1, 3)).data).toEqual(fx.files.get('img')!.subarray(1, 4));
    });
  }

  it('a name with a NUL in EXPORT_NAME ends the session; in GO it is ERR_INVALID', async () => {
    const c = await client();
    await c.handshake();
    c.write(option(7, infoData('im\0g')));
    expect((await c.optionReply()).type).toBe(ERR_INVALID);
    c.write(option(1, Buffer.from('im\0g')));
    await c.closed;
  });
});

describe('nbd server: limits, accounting, stop', () => {
  it('refuses connections over maxConnections, reports them, and accepts again once one leaves', async () => {
    const events: NbdConnectionEvent[] = [];
    const f = await startServer({ img: 4096 }, { maxConnections: 2, onConnection: (e) => events.push(e) });
    try {
      const a = await RawClient.connect(f.port);
      const b = await RawClient.connect(f.port);
      await a.read(18);
      await b.read(18);
      const c = await RawClient.connect(f.port);
      await c.closed;
      expect(events.filter((e) => e.event === 'refused')).toHaveLength(1);
      a.destroy();
      await a.closed;
      await until(() => events.some((e) => e.event === 'close'));
      const d = await RawClient.connect(f.port);
      await d.open('img');
      b.destroy();
      d.destroy();
    } finally {
      await f.close();
    }
  });

  it('disconnects a client that does not finish the handshake in time', async () => {
    const events: NbdConnectionEvent[] = [];
    const f = await startServer({ img: 4096 }, { handshakeTimeoutMs: 100, onConnection: (e) => events.push(e) });
    try {
      const c = await RawClient.connect(f.port);
      await c.handshake();
      await c.closed;
      expect(events).toEqual([expect.objectContaining({ event: 'close', export: null, reason: 'handshake-timeout' })]);
    } finally {
      await f.close();
    }
  });

  it('reports connection open/close and every read with totals and latency', async () => {
    const conns: NbdConnectionEvent[] = [];
    const reads: NbdReadEvent[] = [];
    const f = await startServer({ img: 8192 }, { onConnection: (e) => conns.push(e), onRead: (e) => reads.push(e) });
    try {
      const c = await RawClient.connect(f.port);
      await c.open('img');
      const client = { address: '127.0.0.1', port: c.socket.localPort };
      await c.readAt(0, 4096);
      await c.readAt(4096, 1000);
      expect((await c.readAt(8000, 1000)).error).toBe(EINVAL);
      c.write(request(2, 0n, 0, 0));
      await c.closed;
      await until(() => conns.some((e) => e.event === 'close'));
      expect(conns).toEqual([
        { event: 'open', client, export: 'img', bytes: 0, requests: 0 },
        { event: 'close', client, export: 'img', bytes: 5096, requests: 2, reason: 'client-disc' },
      ]);
      expect(reads.map(({ offset, length, bytes, requests, export: e }) => ({ offset, length, bytes, requests, e }))).toEqual([
        { offset: 0, length: 4096, bytes: 4096, requests: 1, e: 'img' },
        { offset: 4096, length: 1000, bytes: 5096, requests: 2, e: 'img' },
      ]);
      for (const r of reads) {
        expect(r.latencyMs).toBeGreaterThanOrEqual(r.queuedMs);
        expect(r.queuedMs).toBeGreaterThanOrEqual(0);
      }
    } finally {
      await f.close();
    }
  });

  it('shares read slots fairly: a one-read client is not served after a greedy client’s whole queue', async () => {
    const reads: NbdReadEvent[] = [];
    const big = 4 * 1024 * 1024;
    // Reads through the thread pool (cached pages would be copied at once and never queue).
    const f = await startServer({ img: big }, { maxConcurrentReads: 1, cachedReads: false, onRead: (e) => reads.push(e) });
    try {
      const greedy = await RawClient.connect(f.port);
      await greedy.open('img');
      const polite = await RawClient.connect(f.port);
      await polite.open('img');
      greedy.discardIncoming();
      greedy.write(Buffer.concat(Array.from({ length: 60 }, (_, i) => request(0, BigInt(i), (i % 16) * 256 * 1024, 256 * 1024))));
      while (f.server.readStats.queued < 20) await new Promise((r) => setImmediate(r));
      const politePort = polite.socket.localPort;
      const servedBefore = reads.length;
      await polite.readAt(0, 512);
      const politeIndex = reads.findIndex((r) => r.client.port === politePort);
      // At least 20 greedy reads were waiting: first-come-first-served would serve them all
      // first; round-robin serves the polite read at the next free slot or the one after.
      expect(politeIndex - servedBefore).toBeLessThan(5);
      greedy.destroy();
      polite.destroy();
    } finally {
      await f.close();
    }
  });

  it('stop() closes every connection and the listener', async () => {
    const f = await startServer({ img: 4096 });
    const a = await RawClient.connect(f.port);
    await a.open('img');
    const b = await RawClient.connect(f.port);
    await b.read(18);
    await f.close();
    await Promise.all([a.closed, b.closed]);
    await expect(RawClient.connect(f.port)).rejects.toThrow(/ECONNREFUSED/);
  });
});

/** Waits until the server has reported what the test needs (its events follow the socket's close). */
async function until(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('the expected server event did not arrive');
    await new Promise((r) => setImmediate(r));
  }
}
