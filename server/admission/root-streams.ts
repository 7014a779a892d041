import type { ServerConfig } from '../config/types.ts';
import { AdmissionQueue, type AdmissionDecision, type AdmissionLimits, type Requester, type Ticket } from './queue.ts';

/**
 * Bodies smaller than this are not root streams: they leave in a few socket writes, and a
 * 503 round trip would cost more than it saves (a superblock probe, a short resume tail).
 */
export const ROOT_STREAM_MIN_BYTES = 1 << 20;

type AdmissionConfig = ServerConfig['admission'];

/** The admission queue of HTTP root streams, following config reloads (read on every request). */
export class RootStreams {
  readonly #config: () => AdmissionConfig;
  #applied: AdmissionConfig;
  readonly #queue: AdmissionQueue;

  constructor(config: () => AdmissionConfig) {
    this.#config = config;
    this.#applied = config();
    this.#queue = new AdmissionQueue(limitsOf(this.#applied));
  }

  get queue(): AdmissionQueue {
    return this.#queue;
  }

  request(who: Requester, now: number): AdmissionDecision {
    const current = this.#config();
    if (current !== this.#applied) {
      this.#applied = current;
      this.#queue.setLimits(limitsOf(current));
    }
    return this.#queue.request(who, now);
  }

  release(ticket: Ticket, now: number, complete: boolean): void {
    this.#queue.release(ticket, now, complete);
  }

  /**
   * How long an admitted stream may run while others wait: preemptAfterSeconds, or 4 times the
   * mean stream time once streams have finished, if that is longer (big images on slow links).
   */
  preemptAfterMs(): number {
    const floor = this.#config().preemptAfterSeconds * 1000;
    return this.#queue.completedStreams > 0 ? Math.max(floor, 4 * this.#queue.meanStreamMs) : floor;
  }

  /**
   * Calls `cut` once the stream has run past preemptAfterMs() while machines wait (checked again
   * every preemptAfterMs() while nobody does). The holder of a slot that stops reading would
   * otherwise keep it as long as its connection lives. Returns the function that stops watching.
   */
  guard(cut: (ranMs: number, waiting: number) => void): () => void {
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      timer = setTimeout(check, this.preemptAfterMs());
      timer.unref();
    };
    const check = () => {
      if (this.#queue.queued > 0) cut(Date.now() - started, this.#queue.queued);
      else arm();
    };
    arm();
    return () => clearTimeout(timer);
  }
}

function limitsOf(config: AdmissionConfig): AdmissionLimits {
  return {
    maxActive: config.maxRootStreams,
    maxQueued: config.maxQueued,
    maxQueuedPerAddress: config.maxQueuedPerAddress,
    maxRetryAfterSeconds: config.maxRetryAfterSeconds,
  };
}

/**
 * The 503's reason phrase. It repeats the Retry-After seconds because busybox wget (our
 * /init's client) stops at an error status line and never shows the headers: the line
 * `wget: server returned error: HTTP/1.1 503 ...` is all /init gets to read.
 */
export function waitStatusMessage(decision: Exclude<AdmissionDecision, { kind: 'admit' }>): string {
  const where = decision.kind === 'wait' ? `queued ${decision.position} of ${decision.queued}` : 'queue full';
  return `Service Unavailable (${where}, retry after ${decision.retryAfterSeconds} s)`;
}

/** The 503's body, for people reading it with curl. */
export function waitBody(decision: Exclude<AdmissionDecision, { kind: 'admit' }>, maxRootStreams: number): string {
  if (decision.kind === 'full') {
    const why = decision.reason === 'queue' ? 'the queue is full' : 'this address holds as many queue places as it may';
    return `all ${maxRootStreams} root streams are busy and ${why}: retry after ${decision.retryAfterSeconds} s\n`;
  }
  return `all ${maxRootStreams} root streams are busy: you are number ${decision.position} of ${decision.queued} in the queue; retry after ${decision.retryAfterSeconds} s (your place is kept)\n`;
}
