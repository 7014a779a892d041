/**
 * Bulk downloads (iPXE's scripts, kernel and initrd on one connection, and the whole root in
 * root: ram) for bench/storm's fleet, on worker threads of their own. 500 machines take in 500 x 77 MiB; through Node's HTTP client on
 * the fleet's one event loop, beside every machine's DHCP, TFTP and scripts, that loop was the
 * storm's bottleneck (its thread at 100 %, hundreds of ms late for every packet), so the figures
 * measured the fleet. Real machines each have a CPU of their own: here each worker thread takes
 * a share of the machines' bodies on its own event loop, enough threads that the few streams of
 * an admission-limited server do not all land on one (8 threads of 2 made a 2-thread fleet, not
 * the server, the limit), at a lower priority so that they take the cores the servers leave.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { constants as perfConstants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import { httpFetch, ipxeHttp, type HttpCounters, type IpxeHttpResult } from './storm-protocols.ts';
import type { GcStats } from './storm-summary.ts';

interface Job {
  id: number;
  /** A body to take in (get), or iPXE's whole HTTP part from `url`, its boot file, on (ipxe). */
  kind: 'get' | 'ipxe';
  url: string;
  localAddress: string;
  /** Seeds the jitter added to Retry-After waits (per machine, deterministic). */
  seed: number;
  tries: number;
  /** ipxe: the machine's MAC (its script's `${mac:hexhyp}`). */
  mac?: string;
}

type Done = {
  id: number;
  counters: HttpCounters;
  timing: { headersAt: number; endAt: number; reads: number };
  ipxe?: IpxeHttpResult;
  error?: string;
  /** ipxe: the phase that failed. */
  phase?: string;
};

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
  /** Resolves once every thread has loaded its modules (about 0.3 s of CPU each: not to be spent during the storm). */
  readonly ready: Promise<void>;

  constructor(threads: number) {
    const loaded: Promise<void>[] = [];
    this.#workers = Array.from({ length: threads }, () => {
      const worker = new Worker(new URL('./storm-downloads-worker.mjs', import.meta.url));
      loaded.push(
        new Promise<void>((resolve, reject) => {
          worker.once('message', () => resolve());
          worker.once('error', reject);
        }),
      );
      worker.on('message', (done: Done | 'ready') => {
        if (done === 'ready') return;
        this.#pending.get(done.id)?.(done);
        this.#pending.delete(done.id);
      });
      worker.on('error', (err) => {
        for (const settle of this.#pending.values()) settle({ id: 0, counters: { waits: 0, waitMs: 0, retries: 0 }, timing: { headersAt: NaN, endAt: NaN, reads: 0 }, error: `download thread died: ${err.message}` });
        this.#pending.clear();
      });
      return worker;
    });
    this.ready = Promise.all(loaded).then(() => undefined);
  }

  /**
   * GETs `url` from `localAddress` on worker `index % threads`, as /init does (503 + Retry-After
   * honoured, `tries` attempts for other failures). Resolves with the waits and retries and the
   * body's timing on this thread's performance.now() clock; throws with the reason on failure
   * (its `counters` attached).
   */
  async get(index: number, url: string, localAddress: string, seed: number, tries: number): Promise<Omit<Done, 'id' | 'error'>> {
    const done = await this.#run(index, { kind: 'get', url, localAddress, seed, tries });
    const local = (epochMs: number) => epochMs - performance.timeOrigin;
    return { counters: done.counters, timing: { headersAt: local(done.timing.headersAt), endAt: local(done.timing.endAt), reads: done.timing.reads } };
  }

  /** iPXE's HTTP part (ipxeHttp) for one machine on worker `index % threads`; throws with the failed `phase` and the `counters`. */
  async ipxe(index: number, bootfile: string, mac: string, localAddress: string, seed: number): Promise<{ counters: HttpCounters; result: IpxeHttpResult }> {
    const done = await this.#run(index, { kind: 'ipxe', url: bootfile, mac, localAddress, seed, tries: 1 });
    return { counters: done.counters, result: done.ipxe! };
  }

  async #run(index: number, job: Omit<Job, 'id'>): Promise<Done> {
    const id = this.#next++;
    const done = await new Promise<Done>((resolve) => {
      this.#pending.set(id, resolve);
      this.#workers[index % this.#workers.length]!.postMessage({ id, ...job } satisfies Job);
    });
    if (done.error !== undefined) throw Object.assign(new Error(done.error), { counters: done.counters, phase: done.phase });
    return done;
  }

  /** Garbage collections on the download threads since they started, summed (each thread counts its own). */
  async gcStats(): Promise<GcStats> {
    const all = await Promise.all(
      this.#workers.map(
        (worker) =>
          new Promise<GcStats>((resolve) => {
            // A thread that died or hangs answers nothing: its share counts as none rather than holding up the report.
            const timer = setTimeout(() => {
              worker.off('message', onMessage);
              resolve(emptyGcStats());
            }, GC_STATS_WAIT_MS);
            const onMessage = (message: unknown) => {
              if (typeof message !== 'object' || message === null || !('gc' in message)) return;
              clearTimeout(timer);
              worker.off('message', onMessage);
              resolve((message as { gc: GcStats }).gc);
            };
            worker.on('message', onMessage);
            worker.postMessage('gc');
          }),
      ),
    );
    return all.reduce((sum, s) => ({ major: sum.major + s.major, majorMs: sum.majorMs + s.majorMs, minor: sum.minor + s.minor, minorMs: sum.minorMs + s.minorMs }), emptyGcStats());
  }

  async close(): Promise<void> {
    await Promise.all(this.#workers.map((w) => w.terminate()));
  }
}

const GC_STATS_WAIT_MS = 5000;

export function emptyGcStats(): GcStats {
  return { major: 0, majorMs: 0, minor: 0, minorMs: 0 };
}

/** Counts this thread's garbage collections (major: mark-compact, minor: scavenge) into `stats` from now on. */
export function countGc(stats: GcStats): PerformanceObserver {
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = (entry as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind;
      if (kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) {
        stats.major++;
        stats.majorMs += entry.duration;
      } else if (kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) {
        stats.minor++;
        stats.minorMs += entry.duration;
      }
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  return observer;
}

/** Niceness of the download threads: the servers under test (and the fleet's DHCP and TFTP timers) come first when the cores are contended. */
export const DOWNLOAD_NICE = 10;

if (!isMainThread && parentPort) {
  const port = parentPort;
  try {
    // A thread is a task of its own on Linux: its id from /proc/thread-self (PID/task/TID) takes a priority of its own.
    setPriority(Number(readlinkSync('/proc/thread-self').split('/').at(-1)), DOWNLOAD_NICE);
  } catch {
    // not Linux: the same priority as the rest
  }
  const gc = emptyGcStats();
  countGc(gc);
  port.on('message', (job: Job | 'gc') => {
    if (job === 'gc') {
      port.postMessage({ gc });
      return;
    }
    const counters: HttpCounters = { waits: 0, waitMs: 0, retries: 0 };
    const timing = { headersAt: NaN, endAt: NaN, reads: 0 };
    // A worker's performance.now() counts from the worker's own start: sent as epoch ms (its timeOrigin added).
    const toEpoch = (t: number) => performance.timeOrigin + t;
    if (job.kind === 'ipxe') {
      ipxeHttp(job.url, job.mac!, { localAddress: job.localAddress, jitter: jitterFrom(job.seed), counters }).then(
        (ipxe) => port.postMessage({ id: job.id, counters, timing, ipxe } satisfies Done),
        (err: Error & { phase?: string }) => port.postMessage({ id: job.id, counters, timing, error: err.message, ...(err.phase ? { phase: err.phase } : {}) } satisfies Done),
      );
      return;
    }
    httpFetch(job.url, { localAddress: job.localAddress, jitter: jitterFrom(job.seed), counters, tries: job.tries, timing }).then(
      () => port.postMessage({ id: job.id, counters, timing: { headersAt: toEpoch(timing.headersAt), endAt: toEpoch(timing.endAt), reads: timing.reads } } satisfies Done),
      (err: Error) => port.postMessage({ id: job.id, counters, timing, error: err.message } satisfies Done),
    );
  });
  port.postMessage('ready');
}
