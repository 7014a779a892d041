import { describe, expect, it } from 'vitest';
import { AdmissionQueue, CARRY_MS, EXPIRY_GRACE_MS, INITIAL_STREAM_MS, RETRY_AFTER_HELD_SECONDS, type AdmissionDecision, type AdmissionLimits, type Ticket } from '../../server/admission/queue.ts';

const limits = (over: Partial<AdmissionLimits> = {}): AdmissionLimits => ({ maxActive: 1, maxQueued: 64, maxQueuedPerAddress: 4, maxRetryAfterSeconds: 30, ...over });
const machine = (n: number) => ({ address: `10.0.0.${n}`, machine: `52:54:00:00:00:${n.toString(16).padStart(2, '0')}` });

function ticketOf(decision: AdmissionDecision): Ticket {
  if (decision.kind !== 'admit') throw new Error(`expected admit, got ${JSON.stringify(decision)}`);
  return decision.ticket;
}

describe('AdmissionQueue', () => {
  it('admits up to the budget, then queues in arrival order with positions', () => {
    const q = new AdmissionQueue(limits({ maxActive: 2 }));
    expect(q.request(machine(1), 0).kind).toBe('admit');
    expect(q.request(machine(2), 0).kind).toBe('admit');
    expect(q.request(machine(3), 0)).toMatchObject({ kind: 'wait', position: 1, queued: 1, first: true });
    expect(q.request(machine(4), 0)).toMatchObject({ kind: 'wait', position: 2, queued: 2, first: true });
    // Coming back keeps the place; it is not a new arrival.
    expect(q.request(machine(4), 1000)).toMatchObject({ kind: 'wait', position: 2, first: false });
    expect(q.request(machine(3), 1000)).toMatchObject({ kind: 'wait', position: 1, first: false });
    expect(q.active).toBe(2);
    expect(q.queued).toBe(2);
  });

  it('held waiters get a freed slot at once, in queue order; a newcomer never goes ahead of them', () => {
    const q = new AdmissionQueue(limits());
    const first = ticketOf(q.request(machine(1), 0));
    expect(q.request(machine(2), 10)).toMatchObject({ kind: 'wait', position: 1 });
    q.hold(machine(2));
    expect(q.request(machine(3), 20)).toMatchObject({ kind: 'wait', position: 2 });
    q.hold(machine(3));
    expect(q.present).toBe(2);
    expect(q.admitNext(30)).toBeNull();
    q.release(first, 5000);
    // A newcomer asking first is queued behind the held ones.
    expect(q.request(machine(9), 5000)).toMatchObject({ kind: 'wait', position: 3 });
    const next = q.admitNext(5001);
    expect(next).toMatchObject({ key: '10.0.0.2 52:54:00:00:00:02', decision: { kind: 'admit', waited: { ms: 4991, retries: 0 } } });
    expect(q.admitNext(5001)).toBeNull();
    q.release(next!.decision.ticket, 7000);
    expect(q.admitNext(7000)).toMatchObject({ key: '10.0.0.3 52:54:00:00:00:03' });
    expect(q.request(machine(9), 7100)).toMatchObject({ kind: 'wait', position: 1 });
  });

  it('an absent waiter keeps its place; a slot freed while it is away goes to a present one behind it, and the next is kept for it', () => {
    const q = new AdmissionQueue(limits());
    const first = ticketOf(q.request(machine(1), 0));
    expect(q.request(machine(2), 10)).toMatchObject({ kind: 'wait', position: 1 }); // polls: never held
    q.request(machine(3), 20);
    q.hold(machine(3));
    q.release(first, 1000);
    const third = q.admitNext(1000);
    expect(third).toMatchObject({ key: '10.0.0.3 52:54:00:00:00:03' });
    q.request(machine(4), 1100);
    q.hold(machine(4));
    q.release(third!.decision.ticket, 2000);
    // Machine 2 was overtaken once while away: this slot is kept for it, the held machine 4 waits.
    expect(q.admitNext(2000)).toBeNull();
    expect(q.request(machine(5), 2001)).toMatchObject({ kind: 'wait', position: 3 });
    expect(q.request(machine(2), 2500)).toMatchObject({ kind: 'admit', waited: { ms: 2490, retries: 0 } });
    expect(q.request(machine(5), 2600)).toMatchObject({ kind: 'wait', position: 2 });
  });

  it('a hold that runs out keeps the place, says come back in 1 s, and the place expires if nobody does', () => {
    const q = new AdmissionQueue(limits());
    ticketOf(q.request(machine(1), 0));
    q.request(machine(2), 0);
    q.hold(machine(2));
    // Held: never expires, however long.
    expect(q.request(machine(3), 600_000)).toMatchObject({ kind: 'wait', position: 2 });
    const told = q.letGo(machine(2), 600_000);
    expect(told).toEqual({ kind: 'wait', position: 1, queued: 2, retryAfterSeconds: RETRY_AFTER_HELD_SECONDS, first: false });
    const deadline = 600_000 + 2 * RETRY_AFTER_HELD_SECONDS * 1000 + EXPIRY_GRACE_MS;
    expect(q.request(machine(3), deadline - 1)).toMatchObject({ kind: 'wait', position: 2 });
    expect(q.request(machine(3), deadline + 60_000)).toMatchObject({ kind: 'wait', position: 1 });
    expect(q.letGo(machine(2), deadline + 60_000)).toBeNull();
  });

  it('no starvation: newcomers all the time, waiters held 5 s then back after 1 s: all served, each overtaken at most once, held ones in order', () => {
    // Budget 2, a new machine every second for 100 s, streams of 3 s.
    const q = new AdmissionQueue(limits({ maxActive: 2, maxQueued: 1000 }));
    const running: { ticket: Ticket; ends: number }[] = [];
    const heldUntil = new Map<number, number>();
    const backAt = new Map<number, number>();
    const served: number[] = [];
    let next = 0;
    const start = (id: number, ticket: Ticket, now: number) => {
      served.push(id);
      running.push({ ticket, ends: now + 3000 });
    };
    for (let now = 0; now <= 600_000; now += 250) {
      for (const r of running.filter((r) => r.ends <= now)) {
        q.release(r.ticket, now);
        running.splice(running.indexOf(r), 1);
      }
      for (let n = q.admitNext(now); n; n = q.admitNext(now)) {
        const id = [...heldUntil.keys()].find((i) => n!.key.endsWith(machine(i).machine))!;
        heldUntil.delete(id);
        start(id, n.decision.ticket, now);
      }
      for (const [id, until] of heldUntil) {
        if (until > now) continue;
        heldUntil.delete(id);
        backAt.set(id, now + q.letGo(machine(id), now)!.retryAfterSeconds * 1000);
      }
      const askers: number[] = [];
      if (now % 1000 === 0 && now < 100_000) askers.push(next++);
      for (const [id, at] of backAt) if (at <= now) askers.push(id);
      for (const id of askers) {
        backAt.delete(id);
        const decision = q.request(machine(id), now);
        if (decision.kind === 'admit') start(id, decision.ticket, now);
        else {
          q.hold(machine(id));
          heldUntil.set(id, now + 5000);
        }
      }
    }
    expect([...served].sort((a, b) => a - b)).toEqual([...Array(next).keys()]);
    // Overtaken: served after a machine that arrived later.
    const overtakenBy = served.map((id, i) => served.slice(0, i).filter((other) => other > id).length);
    expect(Math.max(...overtakenBy)).toBeLessThanOrEqual(1);
    expect(overtakenBy.some((n) => n === 1)).toBe(true); // the absent gaps do cost places, once
    expect(q.queued).toBe(0);
  });

  it('Retry-After grows with the position, from the mean of finished streams, within 1..max', () => {
    const q = new AdmissionQueue(limits({ maxActive: 2, maxRetryAfterSeconds: 20 }));
    expect(q.retryAfterSeconds(1)).toBe(Math.floor(INITIAL_STREAM_MS / 2 / 1000));
    expect(q.retryAfterSeconds(3)).toBeGreaterThan(q.retryAfterSeconds(1));
    expect(q.retryAfterSeconds(1000)).toBe(20);
    // Streams of 100 ms pull the mean down; the estimate never drops below 1 s.
    for (let i = 0; i < 50; i++) q.release(ticketOf(q.request(machine(1), i * 1000)), i * 1000 + 100);
    expect(q.meanStreamMs).toBeLessThan(200);
    expect(q.retryAfterSeconds(1)).toBe(1);
    // An aborted stream does not count.
    const t = ticketOf(q.request(machine(1), 100_000));
    q.release(t, 900_000, false);
    expect(q.meanStreamMs).toBeLessThan(200);
    q.release(t, 900_000); // idempotent
    expect(q.active).toBe(0);
  });

  it('a machine that never comes back loses its place after twice its Retry-After plus a grace', () => {
    const q = new AdmissionQueue(limits());
    ticketOf(q.request(machine(1), 0));
    const gone = q.request(machine(2), 0);
    expect(gone.kind).toBe('wait');
    const told = gone.kind === 'wait' ? gone.retryAfterSeconds : 0;
    expect(q.request(machine(3), 0)).toMatchObject({ kind: 'wait', position: 2 });
    const deadline = 2 * told * 1000 + EXPIRY_GRACE_MS;
    expect(q.request(machine(3), deadline - 1)).toMatchObject({ kind: 'wait', position: 2 });
    expect(q.request(machine(3), deadline)).toMatchObject({ kind: 'wait', position: 1 });
    expect(q.queued).toBe(1);
    // Coming back after expiry is a new arrival, behind machine 3.
    expect(q.request(machine(2), deadline + 1)).toMatchObject({ kind: 'wait', position: 2, first: true });
  });

  it('bounded memory: many addresses fill at most maxQueued places, one address at most maxQueuedPerAddress', () => {
    const q = new AdmissionQueue(limits({ maxQueued: 100, maxQueuedPerAddress: 3 }));
    ticketOf(q.request(machine(1), 0));
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 10_000; i++) {
      const d = q.request({ address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` }, i);
      const label = d.kind === 'full' ? `full-${d.reason}` : d.kind;
      outcomes.set(label, (outcomes.get(label) ?? 0) + 1);
    }
    expect(q.queued).toBe(100);
    expect(outcomes.get('wait')).toBe(100);
    expect(outcomes.get('full-queue')).toBe(9900);

    const r = new AdmissionQueue(limits({ maxQueuedPerAddress: 3 }));
    ticketOf(r.request(machine(1), 0));
    const one = Array.from({ length: 50 }, (_, i) => r.request({ address: '10.9.9.9', machine: `52:54:00:00:01:${i.toString(16).padStart(2, '0')}` }, 0));
    expect(one.filter((d) => d.kind === 'wait')).toHaveLength(3);
    expect(one.at(-1)).toEqual({ kind: 'full', retryAfterSeconds: 30, reason: 'address' });
    // Someone else still gets a place.
    expect(r.request(machine(7), 0)).toMatchObject({ kind: 'wait', position: 4 });
    // All of it is forgotten once nobody comes back.
    expect(r.request(machine(8), 10 * 60_000)).toMatchObject({ kind: 'wait', position: 1, queued: 1 });
  });

  it('maxActive 0 admits everything; lowering limits never cuts running streams and trims the queue tail', () => {
    const q = new AdmissionQueue(limits({ maxActive: 0 }));
    for (let i = 0; i < 20; i++) expect(q.request(machine(i), 0).kind).toBe('admit');
    expect(q.active).toBe(20);
    q.setLimits(limits({ maxActive: 2, maxQueued: 2 }));
    expect(q.request(machine(30), 1)).toMatchObject({ kind: 'wait', position: 1 });
    expect(q.request(machine(31), 1)).toMatchObject({ kind: 'wait', position: 2 });
    expect(q.request(machine(32), 1)).toMatchObject({ kind: 'full', reason: 'queue' });
    q.setLimits(limits({ maxActive: 2, maxQueued: 1 }));
    expect(q.queued).toBe(1);
    expect(q.request(machine(31), 2)).toMatchObject({ kind: 'full' });
    expect(() => q.setLimits(limits({ maxActive: -1 }))).toThrow(RangeError);
    expect(() => new AdmissionQueue(limits({ maxQueued: 0 }))).toThrow(/maxQueued/);
  });
  it('with carriedStreams, a machine that got its kernel queues for its initrd by its first arrival, ahead of those who came after it', () => {
    const play = (carriedStreams: number) => {
      const q = new AdmissionQueue(limits(), { carriedStreams });
      const kernel = ticketOf(q.request(machine(1), 0));
      for (const [n, at] of [[2, 10], [3, 20]] as const) {
        q.request(machine(n), at);
        q.hold(machine(n));
      }
      q.release(kernel, 1000);
      const second = q.admitNext(1000)!;
      expect(second.key).toBe('10.0.0.2 52:54:00:00:00:02');
      const initrd = q.request(machine(1), 1100);
      q.hold(machine(1));
      q.release(second.decision.ticket, 2000);
      return { initrd, next: q.admitNext(2000)?.key };
    };
    expect(play(3)).toEqual({ initrd: { kind: 'wait', position: 1, queued: 2, retryAfterSeconds: expect.any(Number), first: true }, next: '10.0.0.1 52:54:00:00:00:01' });
    // Per request (root streams): behind machine 3.
    expect(play(0)).toMatchObject({ initrd: { kind: 'wait', position: 2 }, next: '10.0.0.3 52:54:00:00:00:03' });
  });

  it('an arrival is carried for carriedStreams streams, until CARRY_MS after the last one ended, for at most maxQueued requesters', () => {
    const q = new AdmissionQueue(limits({ maxQueued: 2 }), { carriedStreams: 2 });
    // Machine 1: two streams on its arrival at 0, then it is a newcomer again.
    q.release(ticketOf(q.request(machine(1), 0)), 10);
    q.release(ticketOf(q.request(machine(1), 20)), 30);
    const busy = ticketOf(q.request(machine(9), 40));
    expect(q.request(machine(7), 50)).toMatchObject({ kind: 'wait', position: 1 });
    expect(q.request(machine(1), 60)).toMatchObject({ kind: 'wait', position: 2, first: true });
    q.release(busy, 70);
    q.release(ticketOf(q.request(machine(7), 80)), 90);
    q.release(ticketOf(q.request(machine(1), 100)), 110);

    // Machine 2's stream ended at 1010: carried until 1010 + CARRY_MS, not at that instant.
    const r = new AdmissionQueue(limits(), { carriedStreams: 3 });
    r.release(ticketOf(r.request(machine(2), 1000)), 1010);
    const end = 1010 + CARRY_MS;
    const holder = ticketOf(r.request(machine(9), end - 100));
    expect(r.request(machine(7), end - 50)).toMatchObject({ kind: 'wait', position: 1 });
    expect(r.request(machine(2), end - 1)).toMatchObject({ kind: 'wait', position: 1, first: true });
    r.release(holder, end - 1);
    const s = new AdmissionQueue(limits(), { carriedStreams: 3 });
    s.release(ticketOf(s.request(machine(2), 1000)), 1010);
    ticketOf(s.request(machine(9), end - 100));
    s.request(machine(7), end - 50);
    expect(s.request(machine(2), end)).toMatchObject({ kind: 'wait', position: 2 });

    // Three requesters' arrivals, room for two (maxQueued): the first one's is forgotten.
    const t = new AdmissionQueue(limits({ maxQueued: 2 }), { carriedStreams: 3 });
    for (const [n, at] of [[1, 0], [2, 20], [3, 40]] as const) t.release(ticketOf(t.request(machine(n), at)), at + 10);
    ticketOf(t.request(machine(9), 60));
    expect(t.request(machine(7), 70)).toMatchObject({ kind: 'wait', position: 1 });
    expect(t.request(machine(1), 80)).toMatchObject({ kind: 'wait', position: 2 });
    t.letGo(machine(1), 80);
    const u = new AdmissionQueue(limits({ maxQueued: 2 }), { carriedStreams: 3 });
    for (const [n, at] of [[1, 0], [2, 20], [3, 40]] as const) u.release(ticketOf(u.request(machine(n), at)), at + 10);
    ticketOf(u.request(machine(9), 60));
    u.request(machine(7), 70);
    expect(u.request(machine(3), 90)).toMatchObject({ kind: 'wait', position: 1 });

    // A reload that lowers maxQueued forgets the oldest arrivals too.
    const v = new AdmissionQueue(limits({ maxQueued: 3 }), { carriedStreams: 3 });
    for (const [n, at] of [[1, 0], [2, 20], [3, 40]] as const) v.release(ticketOf(v.request(machine(n), at)), at + 10);
    v.setLimits(limits({ maxQueued: 1 }));
    v.setLimits(limits({ maxQueued: 64 }));
    ticketOf(v.request(machine(9), 60));
    v.request(machine(7), 70);
    expect(v.request(machine(3), 80)).toMatchObject({ kind: 'wait', position: 1 });
    expect(v.request(machine(2), 90)).toMatchObject({ kind: 'wait', position: 3 });
  });

  it('an arrival stays carried while its stream runs, however long; one forgotten while its requester waited is not revived with the old time', () => {
    const q = new AdmissionQueue(limits({ maxActive: 2 }), { carriedStreams: 3 });
    ticketOf(q.request(machine(1), 0));
    ticketOf(q.request(machine(9), 10));
    q.request(machine(7), 100);
    // Machine 1's first stream still runs long after CARRY_MS: its next request is still carried.
    expect(q.request(machine(1), 2 * CARRY_MS)).toMatchObject({ kind: 'wait', position: 1 });

    // Budget 2, room for 3 arrivals. Machine 1 queues carried (time 0); while it is away, machine 3
    // takes a slot and pushes machine 1's arrival out.
    const r = new AdmissionQueue(limits({ maxActive: 2, maxQueued: 3 }), { carriedStreams: 3 });
    r.release(ticketOf(r.request(machine(1), 0)), 10);
    const holder = ticketOf(r.request(machine(9), 20));
    ticketOf(r.request(machine(8), 21));
    r.request(machine(3), 30);
    r.hold(machine(3));
    r.request(machine(5), 35);
    expect(r.request(machine(1), 40)).toMatchObject({ kind: 'wait', position: 1 });
    r.release(holder, 50);
    const third = r.admitNext(50)!;
    expect(third.key).toBe('10.0.0.3 52:54:00:00:00:03');
    r.release(third.decision.ticket, 70);
    // Machine 1 is let in on its place; its new arrival is its request at 40, not 0.
    r.release(ticketOf(r.request(machine(1), 70)), 80);
    ticketOf(r.request(machine(9), 85));
    // So machine 5 (arrived at 35) stays ahead of it.
    expect(r.request(machine(1), 90)).toMatchObject({ kind: 'wait', position: 2 });
  });

  it('a storm of machines that each want three bodies: all served in arrival order either way; with carried arrivals each machine is done much sooner', () => {
    // Budget 2, a machine every 500 ms for 50 s, each body 3 s, the next asked for as soon as one ends; waiters held.
    const play = (carriedStreams: number) => {
      const q = new AdmissionQueue(limits({ maxActive: 2, maxQueued: 1000 }), { carriedStreams });
      const running: { id: number; ticket: Ticket; ends: number }[] = [];
      const left = new Map<number, number>();
      const arrived = new Map<number, number>();
      const finished: { id: number; ms: number }[] = [];
      const keyOf = new Map<string, number>();
      const start = (id: number, ticket: Ticket, now: number) => running.push({ id, ticket, ends: now + 3000 });
      const ask = (id: number, now: number) => {
        const decision = q.request(machine(id), now);
        if (decision.kind === 'admit') start(id, decision.ticket, now);
        else q.hold(machine(id));
      };
      let next = 1;
      for (let now = 0; now <= 1_000_000 && finished.length < 100; now += 100) {
        for (const r of running.filter((r) => r.ends <= now)) {
          q.release(r.ticket, now);
          running.splice(running.indexOf(r), 1);
          const remaining = left.get(r.id)! - 1;
          left.set(r.id, remaining);
          if (remaining === 0) finished.push({ id: r.id, ms: now - arrived.get(r.id)! });
          else ask(r.id, now);
        }
        for (let n = q.admitNext(now); n; n = q.admitNext(now)) start(keyOf.get(n.key)!, n.decision.ticket, now);
        if (now % 500 === 0 && next <= 100) {
          const id = next++;
          keyOf.set(`10.0.0.${id} ${machine(id).machine}`, id);
          left.set(id, 3);
          arrived.set(id, now);
          ask(id, now);
        }
      }
      const overtaken = finished.map(({ id }, i) => finished.slice(0, i).filter((f) => f.id > id).length);
      const meanMs = finished.reduce((sum, f) => sum + f.ms, 0) / finished.length;
      return { served: finished.length, maxOvertaken: Math.max(...overtaken), meanMs, queued: q.queued };
    };
    const carried = play(3);
    const perRequest = play(0);
    expect(carried).toMatchObject({ served: 100, maxOvertaken: 0, queued: 0 });
    expect(perRequest).toMatchObject({ served: 100, maxOvertaken: 0, queued: 0 });
    // Per request, every machine's initrds wait behind every later machine's kernel (here 329 s from first request to last body, against 205 s).
    expect(carried.meanMs).toBeLessThan(0.75 * perRequest.meanMs);
  });
});
