/**
 * Bulk downloads (kernel, initrd, and the whole root in root: ram) for bench/storm's fleet, on
 * worker threads of their own. 500 machines take in 500 x 77 MiB; through Node's HTTP client on
 * the fleet's one event loop, beside every machine's DHCP, TFTP and scripts, that loop was the
 * storm's bottleneck (its thread at 100 %, hundreds of ms late for every packet), so the figures
 * measured the fleet. Real machines each have a CPU of their own: here each worker thread takes
 * a share of the machines' bodies on its own event loop.
 */
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import { httpFetch, type HttpCounters } from './storm-protocols.ts';

interface Job {
  id: number;
  url: string;
  localAddress: string;
  /** Seeds the jitter added to Retry-After waits (per machine, deterministic). */
  seed: number;
  tries: number;
}

type Done = { id: number; counters: HttpCounters; timing: { headersAt: number; endAt: number; reads: number }; error?: string };

/** Deterministic jitter in [0, 1) (xorshift). */
export function jitterFrom(seed: number): () => number {
  let x = seed | 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

export class Downloads {
  readonly #workers: Worker[];
  readonly #pending = new Map<number, (done: Done) => void>();
  #next = 1;

  constructor(threads: number) {
    this.#workers = Array.from({ length: threads }, () => {
      const worker = new Worker(new URL('./storm-downloads-worker.mjs', import.meta.url));
      worker.on('message', (done: Done) => {
        this.#pending.get(done.id)?.(done);
        this.#pending.delete(done.id);
      });
      worker.on('error', (err) => {
        for (const settle of this.#pending.values()) settle({ id: 0, counters: { waits: 0, waitMs: 0, retries: 0 }, timing: { headersAt: NaN, endAt: NaN, reads: 0 }, error: `download thread died: ${err.message}` });
        this.#pending.clear();
      });
      return worker;
    });
  }

  /**
   * GETs `url` from `localAddress` on worker `index % threads`, as /init does (503 + Retry-After
   * honoured, `tries` attempts for other failures). Resolves with the waits and retries and the
   * body's timing on this thread's performance.now() clock; throws with the reason on failure
   * (its `counters` attached).
   */
  async get(index: number, url: string, localAddress: string, seed: number, tries: number): Promise<Omit<Done, 'id' | 'error'>> {
    const id = this.#next++;
    const done = await new Promise<Done>((resolve) => {
      this.#pending.set(id, resolve);
      this.#workers[index % this.#workers.length]!.postMessage({ id, url, localAddress, seed, tries } satisfies Job);
    });
    if (done.error !== undefined) throw Object.assign(new Error(done.error), { counters: done.counters });
    const local = (epochMs: number) => epochMs - performance.timeOrigin;
    return { counters: done.counters, timing: { headersAt: local(done.timing.headersAt), endAt: local(done.timing.endAt), reads: done.timing.reads } };
  }

  async close(): Promise<void> {
    await Promise.all(this.#workers.map((w) => w.terminate()));
  }
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', (job: Job) => {
    const counters: HttpCounters = { waits: 0, waitMs: 0, retries: 0 };
    const timing = { headersAt: NaN, endAt: NaN, reads: 0 };
    // A worker's performance.now() counts from the worker's own start: sent as epoch ms (its timeOrigin added).
    const toEpoch = (t: number) => performance.timeOrigin + t;
    httpFetch(job.url, { localAddress: job.localAddress, jitter: jitterFrom(job.seed), counters, tries: job.tries, timing }).then(
      () => port.postMessage({ id: job.id, counters, timing: { headersAt: toEpoch(timing.headersAt), endAt: toEpoch(timing.endAt), reads: timing.reads } } satisfies Done),
      (err: Error) => port.postMessage({ id: job.id, counters, timing, error: err.message } satisfies Done),
    );
  });
}
