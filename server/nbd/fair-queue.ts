/**
 * Admission control for reads: at most `capacity` tasks run at once across all connections;
 * waiting tasks are taken round-robin by key (one connection each turn, oldest task of that
 * connection first), so a client with a deep queue cannot starve one with a single read.
 */
export type Task = () => Promise<void>;

export class FairQueue<K> {
  private running = 0;
  /** Map order is the round-robin ring: the first key is served next, then moved to the back. */
  private readonly waiting = new Map<K, Task[]>();
  private queuedCount = 0;

  constructor(private readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer, got ${capacity}`);
  }

  get active(): number {
    return this.running;
  }

  get queued(): number {
    return this.queuedCount;
  }

  queuedFor(key: K): number {
    return this.waiting.get(key)?.length ?? 0;
  }

  /** Queues `task`; it starts as soon as a slot is free and it is `key`'s turn. Tasks must not reject. */
  enqueue(key: K, task: Task): void {
    const list = this.waiting.get(key);
    if (list) list.push(task);
    else this.waiting.set(key, [task]);
    this.queuedCount++;
    this.pump();
  }

  /** Forgets every task `key` still has waiting (its connection went away). Returns how many. */
  drop(key: K): number {
    const list = this.waiting.get(key);
    if (!list) return 0;
    this.waiting.delete(key);
    this.queuedCount -= list.length;
    return list.length;
  }

  private pump(): void {
    while (this.running < this.capacity && this.waiting.size > 0) {
      const [key, list] = this.waiting.entries().next().value as [K, Task[]];
      const task = list.shift()!;
      this.waiting.delete(key);
      if (list.length > 0) this.waiting.set(key, list);
      this.queuedCount--;
      this.running++;
      void task()
        .catch(() => undefined)
        .finally(() => {
          this.running--;
          this.pump();
        });
    }
  }
}
