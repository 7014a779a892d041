import type { ServerConfig } from '../config/types.ts';
import { AdmissionQueue, requesterKey, type AdmissionDecision, type AdmissionLimits, type Requester, type Ticket } from './queue.ts';

/**
 * Bodies smaller than this are not streams (root, kernel or initrd): they leave in a few socket writes, and a
 * 503 round trip would cost more than it saves (a superblock probe, a short resume tail).
 */
export const ROOT_STREAM_MIN_BYTES = 1 << 20;

type AdmissionConfig = ServerConfig['admission'];

/** The two budgets: root images, and kernels with initrds. */
export type StreamBudget = 'maxRootStreams' | 'maxBootFileStreams';

/**
 * Streams a machine's first arrival is carried over for (AdmissionQueue's carriedStreams): a
 * boot's kernel, initrd and image initrd queue as one machine's turn, so a machine that got its
 * kernel goes ahead of newcomers for its initrds. A root image is one stream (a resume after a
 * cut queues afresh).
 */
export const CARRIED_STREAMS: Record<StreamBudget, number> = {
  maxRootStreams: 0,
  maxBootFileStreams: 3,
};

/** What a budget's streams are called in 503 bodies, timeline entries and log lines. */
export const STREAM_NAMES: Record<StreamBudget, { one: string; all: string }> = {
  maxRootStreams: { one: 'root stream', all: 'root streams' },
  maxBootFileStreams: { one: 'kernel or initrd stream', all: 'kernel and initrd streams' },
};

type WaitDecision = Extract<AdmissionDecision, { kind: 'wait' }>;
type AdmitDecision = Extract<AdmissionDecision, { kind: 'admit' }>;

/** How a held request ended: let in, told to come back (its hold ran out), or its client went away. */
export type HoldOutcome = AdmitDecision | WaitDecision | { kind: 'gone' };

/**
 * The admission queue of one budget of HTTP streams (root images, or kernels and initrds),
 * following config reloads (read on every request).
 *
 * A request told to wait is not answered at once: it is held open (hold()) for up to
 * maxRetryAfterSeconds, and a slot that frees goes to it in the same tick. Only when the hold
 * runs out is it answered 503 + Retry-After (1 s: come back and be held again). Polling alone
 * left a freed slot idle until its owner's next retry; holding costs one open connection per
 * queue place, which maxQueued bounds.
 */
export class RootStreams {
  readonly #config: () => AdmissionConfig;
  readonly #now: () => number;
  #applied: AdmissionConfig;
  readonly #queue: AdmissionQueue;
  /** Held requests by queue key: how to hand each its slot. */
  readonly #held = new Map<string, (decision: AdmitDecision) => void>();

  readonly #budget: StreamBudget;

  constructor(config: () => AdmissionConfig, now: () => number = Date.now, budget: StreamBudget = 'maxRootStreams') {
    this.#config = config;
    this.#now = now;
    this.#budget = budget;
    this.#applied = config();
    this.#queue = new AdmissionQueue(limitsOf(this.#applied, budget), { carriedStreams: CARRIED_STREAMS[budget] });
  }

  get queue(): AdmissionQueue {
    return this.#queue;
  }

  /** Requests being held open now. */
  get held(): number {
    return this.#held.size;
  }

  request(who: Requester, now: number): AdmissionDecision {
    const current = this.#config();
    if (current !== this.#applied) {
      this.#applied = current;
      this.#queue.setLimits(limitsOf(current, this.#budget));
      queueMicrotask(() => this.#drain());
    }
    return this.#queue.request(who, now);
  }

  /**
   * Holds a request whose decision was `wait`: resolves with its admission as soon as a slot is
   * its, or with a `wait` (Retry-After 1 s) once maxRetryAfterSeconds have passed without one.
   * `gone` is called with a function the caller runs when the client goes away (the place is
   * kept; the request resolves `gone`).
   */
  hold(who: Requester, gone: (cancel: () => void) => void): Promise<HoldOutcome> {
    const key = requesterKey(who);
    return new Promise<HoldOutcome>((resolve) => {
      let done = false;
      const finish = (outcome: HoldOutcome) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (this.#held.get(key) === admit) this.#held.delete(key);
        resolve(outcome);
      };
      // A second request of the same machine took over the hold (its client retried): this one has nothing left to wait for.
      const letGo = (): WaitDecision | { kind: 'gone' } =>
        (this.#held.get(key) === admit ? this.#queue.letGo(who, this.#now()) : null) ?? { kind: 'gone' };
      const admit = (decision: AdmitDecision) => finish(decision);
      const timer = setTimeout(() => finish(letGo()), this.#config().maxRetryAfterSeconds * 1000);
      gone(() => {
        if (done) return;
        letGo();
        finish({ kind: 'gone' });
      });
      this.#held.set(key, admit);
      this.#queue.hold(who);
      this.#drain();
    });
  }

  release(ticket: Ticket, now: number, complete: boolean): void {
    this.#queue.release(ticket, now, complete);
    this.#drain();
  }

  /** Hands free slots to held requests, in queue order. */
  #drain(): void {
    for (;;) {
      const next = this.#queue.admitNext(this.#now());
      if (!next) return;
      const admit = this.#held.get(next.key);
      if (admit) admit(next.decision);
      else this.#queue.release(next.decision.ticket, this.#now(), false);
    }
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

function limitsOf(config: AdmissionConfig, budget: StreamBudget): AdmissionLimits {
  return {
    maxActive: config[budget],
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
export function waitBody(decision: Exclude<AdmissionDecision, { kind: 'admit' }>, max: number, streams = STREAM_NAMES.maxRootStreams.all): string {
  if (decision.kind === 'full') {
    const why = decision.reason === 'queue' ? 'the queue is full' : 'this address holds as many queue places as it may';
    return `all ${max} ${streams} are busy and ${why}: retry after ${decision.retryAfterSeconds} s\n`;
  }
  return `all ${max} ${streams} are busy: you are number ${decision.position} of ${decision.queued} in the queue; retry after ${decision.retryAfterSeconds} s (your place is kept)\n`;
}
