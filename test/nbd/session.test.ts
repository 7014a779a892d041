/**
 * NbdSession without sockets: the per-connection limits (reply bytes held, requests waiting,
 * handshake and write-stall timers) with a fake clock, byte for byte.
 */
import { describe, expect, it } from 'vitest';
import { BLOCK_SIZE } from '../../server/nbd/codec.ts';
import { NbdSession, type ReadAction, type SessionAction, type SessionLimits } from '../../server/nbd/session.ts';
import { AddressCounter } from '../../server/nbd/address-counter.ts';
import { clientFlags, infoData, option, request } from './wire.ts';

const MiB = 1024 * 1024;
const GO = 7;
const READ = 0;

class Clock {
  t = 1000;
  now = () => this.t;
}

const reads = (actions: SessionAction[]) => actions.filter((a): a is ReadAction => a.kind === 'read');
const sent = (actions: SessionAction[]) => actions.flatMap((a) => (a.kind === 'send' ? [a.bytes] : []));
const closeOf = (actions: SessionAction[]) => actions.find((a) => a.kind === 'close' || a.kind === 'end');

/** A session through GO on an export of `size` bytes, with everything sent so far flushed. */
function transmitting(limits: Partial<SessionLimits> = {}, size = 1024 * MiB, clock = new Clock()): { s: NbdSession; clock: Clock } {
  const s = new NbdSession(limits, clock.now);
  const flush = (actions: SessionAction[]) => {
    for (const b of sent(actions)) s.flushed(b.length);
    return actions;
  };
  flush(s.start());
  const lookup = flush(s.receive(Buffer.concat([clientFlags(3), option(GO, infoData('img'))])));
  expect(lookup).toEqual([{ kind: 'lookup', name: 'img', open: true }]);
  const go = flush(s.exportResult({ size }));
  expect(go.at(-1)).toEqual({ kind: 'transmission', name: 'img', size });
  expect(s.heldBytes).toBe(0);
  return { s, clock };
}

const readReq = (handle: number, offset: number, length: number) => request(READ, BigInt(handle), offset, length);

describe('NbdSession: reply bytes held per connection', () => {
  it('16 READs of 32 MiB from a client that never reads: one runs, the rest wait, the session holds at most one reply', () => {
    const { s } = transmitting();
    const burst = Buffer.concat(Array.from({ length: 16 }, (_, i) => readReq(i, i * 32 * MiB, 32 * MiB)));
    const first = s.receive(burst);
    expect(reads(first)).toHaveLength(1);
    expect(s.pendingReads).toBe(15);
    expect(s.heldBytes).toBe(32 * MiB + 16);

    // The read finishes and its reply goes to the socket, which never drains.
    const after = s.readDone(reads(first)[0]!, 32 * MiB + 16);
    expect(reads(after)).toHaveLength(0);
    expect(after).toContainEqual({ kind: 'throttled', heldBytes: 32 * MiB + 16, pendingReads: 15 });
    expect(s.wantsInput).toBe(false);
    expect(s.peakHeldBytes).toBe(32 * MiB + 16);

    // Once the client takes the reply, the next read starts; never two at once.
    const next = s.flushed(32 * MiB + 16);
    expect(reads(next).map((r) => r.handle)).toEqual([1n]);
    expect(s.wantsInput).toBe(true);
    expect(s.peakHeldBytes).toBe(32 * MiB + 16);
  });

  it('small reads run together up to the bound', () => {
    const { s } = transmitting({ maxHeldBytes: 1 * MiB });
    const out = s.receive(Buffer.concat(Array.from({ length: 40 }, (_, i) => readReq(i, i * 65536, 65536))));
    // 15 x (64 KiB + 16) fit in 1 MiB, the 16th does not.
    expect(reads(out)).toHaveLength(15);
    expect(s.heldBytes).toBe(15 * (65536 + 16));
    expect(s.pendingReads).toBe(25);
  });

  it('stops taking requests at maxPendingReads (the client waits in its own TCP buffers)', () => {
    const { s } = transmitting({ maxPendingReads: 4, maxHeldBytes: 64 });
    const out = s.receive(Buffer.concat(Array.from({ length: 10 }, (_, i) => readReq(i, 0, 4096))));
    expect(reads(out)).toHaveLength(1);
    expect(s.pendingReads).toBe(4);
    expect(s.wantsInput).toBe(false);
    expect(out.filter((a) => a.kind === 'throttled')).toHaveLength(1);
  });

  it('replies to refused commands count too: a client spamming WRITEs and never reading is cut off at the bound', () => {
    const { s } = transmitting({ maxHeldBytes: 160 });
    const writes = Buffer.concat(Array.from({ length: 100 }, (_, i) => request(1, BigInt(i), 0, 0)));
    const out = s.receive(writes);
    expect(sent(out)).toHaveLength(10); // 10 x 16-byte EPERM replies, then no more parsing
    expect(s.heldBytes).toBe(160);
    expect(s.wantsInput).toBe(false);
    const more = s.flushed(160);
    expect(sent(more)).toHaveLength(10);
  });

  it('a read beyond the export or over 32 MiB is refused without holding a read', () => {
    const { s } = transmitting({}, 4096);
    const out = s.receive(Buffer.concat([readReq(1, 4000, 200), readReq(2, 0, BLOCK_SIZE.maximum + 1)]));
    expect(reads(out)).toEqual([]);
    expect(sent(out).map((b) => b.readUInt32BE(4))).toEqual([22, 22]);
  });

  it('DISC ends the session only after the reads asked before it are done', () => {
    const { s } = transmitting();
    const out = s.receive(Buffer.concat([readReq(1, 0, 4096), request(2, 0n, 0, 0)]));
    expect(reads(out)).toHaveLength(1);
    expect(closeOf(out)).toBeUndefined();
    expect(s.readDone(reads(out)[0]!, 4112)).toEqual([{ kind: 'end', reason: 'client-disc' }]);
  });
});

describe('NbdSession: half-close', () => {
  it('answers what came before the end of input, then ends', () => {
    const { s } = transmitting();
    const out = s.receive(readReq(1, 0, 4096));
    expect(s.endOfInput()).toEqual([]); // a read is still running
    expect(s.readDone(reads(out)[0]!, 4112)).toEqual([{ kind: 'end', reason: 'client-eof' }]);
  });

  it('mid-handshake with a lookup outstanding: ends after the answer', () => {
    const s = new NbdSession();
    s.start();
    s.receive(Buffer.concat([clientFlags(3), option(GO, infoData('img')), Buffer.from('IHAVE')]));
    expect(s.endOfInput()).toEqual([]);
    const out = s.exportResult({ size: 4096 });
    expect(out.at(-1)).toEqual({ kind: 'end', reason: 'client-eof' });
  });
});

describe('NbdSession: timers', () => {
  it('a handshake not finished in time ends the session', () => {
    const clock = new Clock();
    const s = new NbdSession({ handshakeTimeoutMs: 10_000 }, clock.now);
    s.start();
    expect(s.deadline).toBe(11_000);
    clock.t = 10_999;
    expect(s.timer()).toEqual([]);
    clock.t = 11_000;
    expect(s.timer()).toEqual([{ kind: 'close', reason: 'handshake-timeout' }]);
    expect(s.closed).toBe(true);
  });

  it('after GO an idle connection has no deadline at all: a mounted root may be quiet for hours', () => {
    const { s, clock } = transmitting({ stallTimeoutMs: 60_000 });
    expect(s.deadline).toBeNull();
    clock.t += 24 * 3600_000;
    expect(s.timer()).toEqual([]);
    // It still reads after a day of silence.
    expect(reads(s.receive(readReq(1, 0, 4096)))).toHaveLength(1);
  });

  it('a connection whose replies are not taken for stallTimeoutMs is ended; progress resets the clock', () => {
    const { s, clock } = transmitting({ stallTimeoutMs: 60_000 });
    const [read] = reads(s.receive(readReq(1, 0, 8 * MiB)));
    expect(s.deadline).toBeNull(); // reading from disk is not the client's fault
    s.readDone(read!, 8 * MiB + 16);
    expect(s.deadline).toBe(clock.t + 60_000);
    clock.t += 50_000;
    s.flushed(4 * MiB); // some progress: the client is slow, not stalled
    expect(s.deadline).toBe(clock.t + 60_000);
    clock.t += 59_999;
    expect(s.timer()).toEqual([]);
    clock.t += 1;
    expect(s.timer()).toEqual([{ kind: 'close', reason: 'write-stalled' }]);
  });

  it('no deadline once every reply is taken', () => {
    const { s } = transmitting({ stallTimeoutMs: 60_000 });
    const [read] = reads(s.receive(readReq(1, 0, 4096)));
    s.readDone(read!, 4112);
    s.flushed(4112);
    expect(s.deadline).toBeNull();
  });
});

describe('NbdSession: negotiation', () => {
  it('an unknown export on GO is an error reply and the client may try again', () => {
    const s = new NbdSession();
    s.start();
    s.receive(Buffer.concat([clientFlags(3), option(GO, infoData('nope'))]));
    const out = s.exportResult(null);
    expect(sent(out)[0]!.readUInt32BE(12)).toBe(0x80000006);
    expect(s.receive(option(GO, infoData('img')))).toEqual([{ kind: 'lookup', name: 'img', open: true }]);
  });

  it('does not read further options while a lookup is outstanding', () => {
    const s = new NbdSession();
    s.start();
    const out = s.receive(Buffer.concat([clientFlags(3), option(6, infoData('a')), option(6, infoData('b'))]));
    expect(out).toEqual([{ kind: 'lookup', name: 'a', open: false }]);
    expect(s.wantsInput).toBe(false);
    const next = s.exportResult({ size: 1 });
    expect(next.at(-1)).toEqual({ kind: 'lookup', name: 'b', open: false });
  });

  it('too many options end the session', () => {
    const s = new NbdSession({ maxOptions: 3 });
    s.start();
    const out = s.receive(Buffer.concat([clientFlags(3), ...Array.from({ length: 5 }, () => option(99))]));
    expect(sent(out)).toHaveLength(3);
    expect(closeOf(out)).toEqual({ kind: 'close', reason: 'too-many-options' });
  });

  it('a protocol error closes with its code', () => {
    const s = new NbdSession();
    s.start();
    expect(s.receive(clientFlags(0xff))).toEqual([{ kind: 'close', reason: 'protocol-error:bad-client-flags' }]);
  });
});

describe('AddressCounter', () => {
  it('counts per address and forgets empty ones', () => {
    const c = new AddressCounter();
    c.add('10.0.0.1');
    c.add('10.0.0.1');
    c.add('10.0.0.2');
    expect([c.count('10.0.0.1'), c.count('10.0.0.2'), c.size]).toEqual([2, 1, 2]);
    c.remove('10.0.0.2');
    c.remove('10.0.0.1');
    expect([c.count('10.0.0.1'), c.count('10.0.0.2'), c.size]).toEqual([1, 0, 1]);
  });
});
