import { describe, expect, it } from 'vitest';
import { FairQueue } from '../../server/nbd/fair-queue.ts';

/** A task that records its start and finishes when the test says so. */
function gate(log: string[], name: string) {
  let release!: () => void;
  const done = new Promise<void>((r) => (release = r));
  return { task: () => (log.push(name), done), release };
}

describe('FairQueue', () => {
  it('never runs more than its capacity at once', async () => {
    const q = new FairQueue<string>(2);
    const log: string[] = [];
    const gates = ['a1', 'a2', 'a3', 'a4'].map((n) => gate(log, n));
    gates.forEach((g) => q.enqueue('a', g.task));
    expect(log).toEqual(['a1', 'a2']);
    expect(q.active).toBe(2);
    expect(q.queued).toBe(2);
    gates[0]!.release();
    await new Promise((r) => setImmediate(r));
    expect(log).toEqual(['a1', 'a2', 'a3']);
  });

  it('serves waiting connections round-robin, so a deep queue cannot starve a short one', async () => {
    const q = new FairQueue<string>(1);
    const log: string[] = [];
    const gates = new Map<string, ReturnType<typeof gate>>();
    const add = (key: string, name: string) => {
      const g = gate(log, name);
      gates.set(name, g);
      q.enqueue(key, g.task);
    };
    for (const name of ['blocker', 'greedy1', 'greedy2', 'greedy3', 'greedy4', 'greedy5']) add('greedy', name);
    add('polite', 'polite1');
    add('third', 'third1');
    // Finish whatever runs, one at a time, and record who got each freed slot.
    for (let i = 0; i < gates.size; i++) {
      gates.get(log[i]!)!.release();
      await new Promise((r) => setImmediate(r));
    }
    expect(log).toEqual(['blocker', 'greedy1', 'polite1', 'third1', 'greedy2', 'greedy3', 'greedy4', 'greedy5']);
  });

  it('drops what a closed connection still has waiting', async () => {
    const q = new FairQueue<string>(1);
    const log: string[] = [];
    const first = gate(log, 'x1');
    q.enqueue('x', first.task);
    q.enqueue('x', gate(log, 'x2').task);
    q.enqueue('y', gate(log, 'y1').task);
    expect(q.drop('x')).toBe(1);
    expect(q.queued).toBe(1);
    first.release();
    await new Promise((r) => setImmediate(r));
    expect(log).toEqual(['x1', 'y1']);
  });

  it('keeps going when a task rejects', async () => {
    const q = new FairQueue<string>(1);
    const log: string[] = [];
    q.enqueue('a', () => Promise.reject(new Error('boom')));
    q.enqueue('a', async () => void log.push('after'));
    await new Promise((r) => setImmediate(r));
    expect(log).toEqual(['after']);
    expect(q.active).toBe(0);
  });
});
