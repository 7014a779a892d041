import { afterEach, describe, expect, it, vi } from 'vitest';
import { RootStreams, waitStatusMessage } from '../../server/admission/root-streams.ts';
import type { ServerConfig } from '../../server/config/types.ts';

const config = (over: Partial<ServerConfig['admission']> = {}): ServerConfig['admission'] => ({
  maxRootStreams: 1,
  maxBootFileStreams: 1,
  maxQueued: 16,
  maxQueuedPerAddress: 4,
  maxRetryAfterSeconds: 30,
  preemptAfterSeconds: 10,
  ...over,
});

afterEach(() => {
  vi.useRealTimers();
});

describe('RootStreams', () => {
  it('cuts a long stream only while someone waits, and checks again while nobody does', () => {
    vi.useFakeTimers();
    const streams = new RootStreams(() => config());
    const admitted = streams.request({ address: '10.0.0.1' }, Date.now());
    expect(admitted.kind).toBe('admit');
    const cuts: [number, number][] = [];
    const unguard = streams.guard((ran, waiting) => cuts.push([ran, waiting]));
    vi.advanceTimersByTime(35_000);
    expect(cuts).toEqual([]);
    expect(streams.request({ address: '10.0.0.2' }, Date.now()).kind).toBe('wait');
    vi.advanceTimersByTime(5_000);
    expect(cuts).toEqual([[40_000, 1]]);
    unguard();
  });

  it('the limit follows the mean stream time once streams have finished (4 times it, if longer)', () => {
    vi.useFakeTimers();
    const streams = new RootStreams(() => config());
    expect(streams.preemptAfterMs()).toBe(10_000);
    for (let i = 0; i < 40; i++) {
      const d = streams.request({ address: '10.0.0.1' }, i * 100_000);
      if (d.kind !== 'admit') throw new Error('not admitted');
      streams.release(d.ticket, i * 100_000 + 60_000, true);
    }
    expect(streams.preemptAfterMs()).toBeGreaterThan(200_000);
    const stopped = streams.guard(() => {
      throw new Error('must not run after unguard');
    });
    stopped();
    vi.advanceTimersByTime(10_000_000);
  });

  it('follows config reloads (the getter is read on every request)', () => {
    let current = config({ maxRootStreams: 1 });
    const streams = new RootStreams(() => current);
    expect(streams.request({ address: '10.0.0.1' }, 0).kind).toBe('admit');
    expect(streams.request({ address: '10.0.0.2' }, 0).kind).toBe('wait');
    current = config({ maxRootStreams: 3 });
    expect(streams.request({ address: '10.0.0.2' }, 1).kind).toBe('admit');
    expect(streams.request({ address: '10.0.0.3' }, 1).kind).toBe('admit');
  });

  it('holds a waiting request: a freed slot is its in the same tick; else after maxRetryAfterSeconds it is told 1 s', async () => {
    vi.useFakeTimers();
    const streams = new RootStreams(() => config({ maxRetryAfterSeconds: 20 }));
    const first = streams.request({ address: '10.0.0.1' }, Date.now());
    if (first.kind !== 'admit') throw new Error('not admitted');
    const who = { address: '10.0.0.2', machine: '52:54:00:00:00:02' };
    expect(streams.request(who, Date.now())).toMatchObject({ kind: 'wait', position: 1, first: true });
    const held = streams.hold(who, () => undefined);
    expect(streams.held).toBe(1);
    vi.advanceTimersByTime(7_000);
    streams.release(first.ticket, Date.now(), true);
    await expect(held).resolves.toMatchObject({ kind: 'admit', waited: { ms: 7_000, retries: 0 } });
    expect(streams.held).toBe(0);

    const third = { address: '10.0.0.3' };
    expect(streams.request(third, Date.now()).kind).toBe('wait');
    const timedOut = streams.hold(third, () => undefined);
    vi.advanceTimersByTime(19_999);
    expect(streams.held).toBe(1);
    vi.advanceTimersByTime(1);
    await expect(timedOut).resolves.toEqual({ kind: 'wait', position: 1, queued: 1, retryAfterSeconds: 1, first: false });
    expect(streams.queue.queued).toBe(1);
  });

  it('a held client that goes away resolves `gone` and keeps its place; a slot is not handed to it', async () => {
    vi.useFakeTimers();
    const streams = new RootStreams(() => config());
    const first = streams.request({ address: '10.0.0.1' }, Date.now());
    if (first.kind !== 'admit') throw new Error('not admitted');
    streams.request({ address: '10.0.0.2' }, Date.now());
    let hangUp = () => {};
    const held = streams.hold({ address: '10.0.0.2' }, (cancel) => (hangUp = cancel));
    hangUp();
    await expect(held).resolves.toEqual({ kind: 'gone' });
    expect(streams.queue.queued).toBe(1);
    expect(streams.queue.present).toBe(0);
    streams.release(first.ticket, Date.now(), true);
    expect(streams.queue.active).toBe(0);
    // It comes back: the free slot is its.
    expect(streams.request({ address: '10.0.0.2' }, Date.now()).kind).toBe('admit');
  });

  it('repeats the Retry-After seconds in a valid reason phrase', () => {
    expect(waitStatusMessage({ kind: 'wait', position: 3, queued: 7, retryAfterSeconds: 4, first: true })).toBe('Service Unavailable (queued 3 of 7, retry after 4 s)');
    expect(waitStatusMessage({ kind: 'full', retryAfterSeconds: 30, reason: 'queue' })).toBe('Service Unavailable (queue full, retry after 30 s)');
  });
});
