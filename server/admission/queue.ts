/**
 * Admission control for root streams (whole-squashfs HTTP downloads): at most `maxActive`
 * run at once; the rest are told to come back later (HTTP 503 + Retry-After) and keep their
 * place in one first-come-first-served queue. Pure: no sockets, no timers; the caller passes
 * the time, so the ordering and expiry rules are tested without waiting.
 *
 * The client protocol is polling (a queued machine retries after the seconds it was told),
 * so a slot that frees up is reserved for the oldest waiters: a newcomer that asks between
 * two retries of the head of the queue is queued behind it, never let in ahead of it. That
 * is what rules out starvation; the price is a slot idle until its owner comes back, which
 * the Retry-After estimate keeps short and the expiry bounds (an owner that never comes back
 * loses its place after `expiry(retryAfter)`).
 *
 * Everything here can be fed by anyone who can open a TCP connection, so it is bounded:
 * `maxQueued` places in all, `maxQueuedPerAddress` per IP address (one per MAC it names); a
 * request beyond either is told to retry later without getting a place.
 */

export interface AdmissionLimits {
  /** Streams at once; 0 = no limit (every request is admitted at once). */
  maxActive: number;
  /** Queue places in all. */
  maxQueued: number;
  /** Queue places one address may hold. */
  maxQueuedPerAddress: number;
  /** Longest Retry-After handed out, seconds. */
  maxRetryAfterSeconds: number;
}

/** Who asks: the peer address (what the server can check) and the MAC the request names, if any. */
export interface Requester {
  address: string;
  machine?: string;
}

export interface Ticket {
  readonly id: number;
  readonly startedAt: number;
}

export type AdmissionDecision =
  | {
      kind: 'admit';
      ticket: Ticket;
      /** Set when the requester had been queued: how long since its first 503, and how many times it came back. */
      waited?: { ms: number; retries: number };
    }
  | {
      kind: 'wait';
      /** 1 = next in line. */
      position: number;
      queued: number;
      retryAfterSeconds: number;
      /** This request got the requester its place (its first 503). */
      first: boolean;
    }
  /** No place left for this requester (queue or its address at the cap): retry later, without a place. */
  | { kind: 'full'; retryAfterSeconds: number; reason: 'queue' | 'address' };

interface Entry {
  address: string;
  firstSeen: number;
  expiresAt: number;
  retries: number;
}

/** A place is kept this long past twice the Retry-After it was given (client jitter, backoff, a slow link). */
export const EXPIRY_GRACE_MS = 15_000;
/** Mean stream duration assumed before any stream has finished. */
export const INITIAL_STREAM_MS = 10_000;
/** Weight of the newest finished stream in the running mean. */
const MEAN_WEIGHT = 0.2;

export class AdmissionQueue {
  #limits: AdmissionLimits;
  /** Map order is the queue order: first come, first served. */
  readonly #queue = new Map<string, Entry>();
  readonly #perAddress = new Map<string, number>();
  readonly #active = new Set<number>();
  #nextTicket = 1;
  #meanStreamMs = INITIAL_STREAM_MS;
  #completed = 0;
  #nextExpiry = Infinity;

  constructor(limits: AdmissionLimits) {
    this.#limits = checkLimits(limits);
  }

  get limits(): Readonly<AdmissionLimits> {
    return this.#limits;
  }

  /** Applies new limits (a config reload). Streams already running are never cut; places past a lowered cap are forgotten, newest first. */
  setLimits(limits: AdmissionLimits): void {
    this.#limits = checkLimits(limits);
    const keys = [...this.#queue.keys()];
    for (const key of keys.slice(limits.maxQueued)) this.#forget(key);
  }

  get active(): number {
    return this.#active.size;
  }

  get queued(): number {
    return this.#queue.size;
  }

  /** The running mean of finished streams' durations, the base of every Retry-After. */
  get meanStreamMs(): number {
    return this.#meanStreamMs;
  }

  /** Streams that ran to their end (the mean is a guess until there is one). */
  get completedStreams(): number {
    return this.#completed;
  }

  request(who: Requester, now: number): AdmissionDecision {
    this.#expire(now);
    const key = keyOf(who);
    const { maxActive } = this.#limits;
    if (maxActive === 0) {
      const entry = this.#queue.get(key);
      if (entry) this.#forget(key);
      return this.#admit(now, entry);
    }
    const free = maxActive - this.#active.size;
    const entry = this.#queue.get(key);
    if (entry) {
      const index = this.#indexOf(key);
      if (index < free) {
        this.#forget(key);
        return this.#admit(now, entry);
      }
      entry.retries++;
      return this.#wait(entry, index + 1, now, false);
    }
    // A newcomer goes behind everyone already waiting, even when a slot is free: that slot is theirs.
    if (this.#queue.size < free) return this.#admit(now);
    if (this.#queue.size >= this.#limits.maxQueued) return { kind: 'full', retryAfterSeconds: this.#limits.maxRetryAfterSeconds, reason: 'queue' };
    const held = this.#perAddress.get(who.address) ?? 0;
    if (held >= this.#limits.maxQueuedPerAddress) return { kind: 'full', retryAfterSeconds: this.#limits.maxRetryAfterSeconds, reason: 'address' };
    const fresh: Entry = { address: who.address, firstSeen: now, expiresAt: now, retries: 0 };
    this.#queue.set(key, fresh);
    this.#perAddress.set(who.address, held + 1);
    return this.#wait(fresh, this.#queue.size, now, true);
  }

  /**
   * The stream of `ticket` ended. Idempotent. A complete stream's duration feeds the mean that
   * Retry-After estimates come from (an aborted one says nothing about how long streams take).
   */
  release(ticket: Ticket, now: number, complete = true): void {
    if (!this.#active.delete(ticket.id)) return;
    if (!complete) return;
    this.#completed++;
    this.#meanStreamMs += MEAN_WEIGHT * (Math.max(0, now - ticket.startedAt) - this.#meanStreamMs);
  }

  /** Seconds to wait for the machine at `position`: slots free up at about maxActive per mean stream time. */
  retryAfterSeconds(position: number): number {
    const maxActive = Math.max(1, this.#limits.maxActive);
    const estimate = Math.floor((position * this.#meanStreamMs) / maxActive / 1000);
    return Math.min(this.#limits.maxRetryAfterSeconds, Math.max(1, estimate));
  }

  #admit(now: number, entry?: Entry): AdmissionDecision {
    const ticket: Ticket = { id: this.#nextTicket++, startedAt: now };
    this.#active.add(ticket.id);
    return entry ? { kind: 'admit', ticket, waited: { ms: now - entry.firstSeen, retries: entry.retries } } : { kind: 'admit', ticket };
  }

  #wait(entry: Entry, position: number, now: number, first: boolean): AdmissionDecision {
    const retryAfterSeconds = this.retryAfterSeconds(position);
    entry.expiresAt = now + 2 * retryAfterSeconds * 1000 + EXPIRY_GRACE_MS;
    this.#nextExpiry = Math.min(this.#nextExpiry, entry.expiresAt);
    return { kind: 'wait', position, queued: this.#queue.size, retryAfterSeconds, first };
  }

  #indexOf(key: string): number {
    let index = 0;
    for (const k of this.#queue.keys()) {
      if (k === key) return index;
      index++;
    }
    return -1;
  }

  /** Drops the places of requesters that did not come back in time (at most one scan per expiry instant). */
  #expire(now: number): void {
    if (now < this.#nextExpiry) return;
    let next = Infinity;
    for (const [key, entry] of this.#queue) {
      if (entry.expiresAt <= now) this.#forget(key);
      else next = Math.min(next, entry.expiresAt);
    }
    this.#nextExpiry = next;
  }

  #forget(key: string): void {
    const entry = this.#queue.get(key);
    if (!entry) return;
    this.#queue.delete(key);
    const held = (this.#perAddress.get(entry.address) ?? 1) - 1;
    if (held > 0) this.#perAddress.set(entry.address, held);
    else this.#perAddress.delete(entry.address);
  }
}

function keyOf(who: Requester): string {
  return `${who.address} ${who.machine ?? ''}`;
}

function checkLimits(limits: AdmissionLimits): AdmissionLimits {
  for (const [name, value] of Object.entries(limits)) {
    const min = name === 'maxActive' ? 0 : 1;
    if (!Number.isInteger(value) || value < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  }
  return { ...limits };
}
