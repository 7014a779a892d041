import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

/** How often the main event loop's lateness is sampled. */
const LOOP_LAG_RESOLUTION_MS = 10;

/**
 * How late the event loop ran, in seconds, from a monitorEventLoopDelay() value (ns). That
 * histogram records the whole interval between runs of its own timer, so a loop on time reads
 * about the resolution (p50 10.2 ms at 10 ms); the lateness is what exceeds it, and a timer
 * that ran early counts as none.
 */
export function loopLagSeconds(intervalNs: number, resolutionMs = LOOP_LAG_RESOLUTION_MS): number {
  return Math.max(0, intervalNs / 1e9 - resolutionMs / 1000);
}

export interface LoopLag {
  p50: number;
  p99: number;
  max: number;
}

/**
 * The event loop's lateness since the last `take()`. On the server's main loop, DHCP, scripts,
 * layers and events all wait behind whatever that loop is doing, so this is the delay every one
 * of them saw on top of its own work. A process needs one (loopLagSampler()); its timer does not
 * keep the process alive.
 */
export class LoopLagSampler {
  readonly #histogram: IntervalHistogram;
  readonly #resolutionMs: number;

  constructor(resolutionMs = LOOP_LAG_RESOLUTION_MS) {
    this.#resolutionMs = resolutionMs;
    this.#histogram = monitorEventLoopDelay({ resolution: resolutionMs });
    this.#histogram.enable();
  }

  /** Intervals recorded since the last take (the timer's first run after it starts only marks the time). */
  get samples(): number {
    return this.#histogram.count;
  }

  /** Lateness percentiles since the last take (zeros when the timer has not run since), then starts afresh. */
  take(): LoopLag {
    const h = this.#histogram;
    const lag = h.count === 0 ? { p50: 0, p99: 0, max: 0 } : { p50: this.#seconds(h.percentile(50)), p99: this.#seconds(h.percentile(99)), max: this.#seconds(h.max) };
    h.reset();
    return lag;
  }

  #seconds(ns: number): number {
    return loopLagSeconds(ns, this.#resolutionMs);
  }
}

let shared: LoopLagSampler | null = null;

/** The process's sampler, started on first use. */
export function loopLagSampler(): LoopLagSampler {
  shared ??= new LoopLagSampler();
  return shared;
}
