/**
 * Admission control for root streams (whole-squashfs HTTP downloads): at most `maxActive`
 * run at once; the rest are told to come back later (HTTP 503 + Retry-After) and keep their
 * place in one first-come-first-served queue. Pure: no sockets, no timers; the caller passes
 * the time, so the ordering and expiry rules are tested without waiting.
 *
 * A waiting request is held open by the server (see RootStreams): the machine is then
 * *present*, and a slot that frees goes at once to the first present waiter in queue order.
 * Between two requests (after a hold ran out, its 503, the client's Retry-After) a machine is
 * *absent*: it keeps its place, but a slot does not sit idle for it; it goes to the next
 * present waiter, and the absent one is marked *skipped*. A skipped machine's slot is kept for
 * it from then on until it comes back (or its place expires), so nobody is overtaken more
 * than once while away and never while present by a newcomer: no starvation. (A machine that
 * arrived earlier, carrying its arrival as below, may still go ahead of it.) Measured on bench/storm, a
 * slot kept for an absent head of the line (the earlier rule) sat idle up to one Retry-After
 * and was most of netboot's gap to a plain nginx.
 *
 * First come, first served *per machine* where a machine asks for several bodies in a row (a
 * kernel, then its initrds): with `carriedStreams` set, a requester whose stream ended less
 * than CARRY_MS ago queues by the time it first arrived, ahead of machines that came after it,
 * for up to that many streams. Served per request instead, a storm moves phase by phase (every
 * kernel, then every initrd) and no machine gets on with its boot until the last kernel is out.
 *
 * Everything here can be fed by anyone who can open a TCP connection, so it is bounded:
 * `maxQueued` places in all, `maxQueuedPerAddress` per IP address (one per MAC it names); a
 * request beyond either is told to retry later without getting a place. Carried arrivals are
 * at most `maxQueued` (the oldest forgotten first), and a requester's arrival is carried for
 * `carriedStreams` streams at most: after that it is a newcomer again.
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
  /** Its place in line: when it first asked (carried over from its last streams, see Arrival). */
  arrivedAt: number;
  firstSeen: number;
  expiresAt: number;
  retries: number;
  /** Its request is being held open right now. */
  present: boolean;
  /** A slot went to someone behind it while it was absent: slots are kept for it now. */
  skipped: boolean;
}

/** A requester's first arrival, kept while its streams run and for CARRY_MS after, for its next requests. */
interface Arrival {
  at: number;
  /** Streams admitted on it so far. */
  streams: number;
  /** Of them, still running. */
  running: number;
  /** When it stops being carried (Infinity while a stream runs). */
  expiresAt: number;
}

/** How long after its last stream ended a requester's next request still queues by its first arrival (iPXE asks for the initrd at once; a script's retry comes within seconds). */
export const CARRY_MS = 60_000;

/** Retry-After once a held request's hold ran out: come straight back and be held again. */
export const RETRY_AFTER_HELD_SECONDS = 1;

/** A place is kept this long past twice the Retry-After it was given (client jitter, backoff, a slow link). */
export const EXPIRY_GRACE_MS = 15_000;
/** Mean stream duration assumed before any stream has finished. */
export const INITIAL_STREAM_MS = 10_000;
/** Weight of the newest finished stream in the running mean. */
const MEAN_WEIGHT = 0.2;

export interface QueueOptions {
  /** Streams a requester's first arrival is carried over for (0: every request queues as a newcomer). */
  carriedStreams?: number;
}

export class AdmissionQueue {
  #limits: AdmissionLimits;
  readonly #carriedStreams: number;
  /** Map order is the queue order: by arrival, first come, first served. */
  readonly #queue = new Map<string, Entry>();
  readonly #perAddress = new Map<string, number>();
  /** Running streams: ticket id to the requester's key and the arrival the stream counted on (if carried). */
  readonly #active = new Map<number, { key: string; arrival: Arrival | undefined }>();
  /** Carried arrivals by requester key; Map order is the order they were last touched. */
  readonly #arrivals = new Map<string, Arrival>();
  #nextTicket = 1;
  #meanStreamMs = INITIAL_STREAM_MS;
  #completed = 0;
  #nextExpiry = Infinity;

  constructor(limits: AdmissionLimits, options: QueueOptions = {}) {
    this.#limits = checkLimits(limits);
    this.#carriedStreams = options.carriedStreams ?? 0;
  }

  get limits(): Readonly<AdmissionLimits> {
    return this.#limits;
  }

  /** Applies new limits (a config reload). Streams already running are never cut; places past a lowered cap are forgotten, newest first. */
  setLimits(limits: AdmissionLimits): void {
    this.#limits = checkLimits(limits);
    const keys = [...this.#queue.keys()];
    for (const key of keys.slice(limits.maxQueued)) this.#forget(key);
    this.#trimArrivals();
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
    const key = requesterKey(who);
    const { maxActive } = this.#limits;
    if (maxActive === 0) {
      const entry = this.#queue.get(key);
      if (entry) this.#forget(key);
      return this.#admit(now, key, entry);
    }
    const entry = this.#queue.get(key);
    if (entry) {
      entry.present = false;
      if (this.#slotAhead(key)) {
        this.#forget(key);
        return this.#admit(now, key, entry);
      }
      entry.retries++;
      return this.#wait(entry, this.#indexOf(key) + 1, now, false, this.retryAfterSeconds(this.#indexOf(key) + 1));
    }
    // A newcomer goes behind everyone who arrived before it (everyone waiting, unless its arrival
    // is carried over): it gets a slot only if none is owed to them.
    const carried = this.#carriedArrival(key, now);
    const arrivedAt = carried ?? now;
    // Only a carried arrival goes ahead of anyone: a newcomer's is the end of the line, even if the clock stepped back.
    const behind = carried === undefined ? null : this.#firstArrivedAfter(carried);
    if (this.#slotAhead(behind)) return this.#admit(now, key);
    if (this.#queue.size >= this.#limits.maxQueued) return { kind: 'full', retryAfterSeconds: this.#limits.maxRetryAfterSeconds, reason: 'queue' };
    const held = this.#perAddress.get(who.address) ?? 0;
    if (held >= this.#limits.maxQueuedPerAddress) return { kind: 'full', retryAfterSeconds: this.#limits.maxRetryAfterSeconds, reason: 'address' };
    const fresh: Entry = { address: who.address, arrivedAt, firstSeen: now, expiresAt: now, retries: 0, present: false, skipped: false };
    this.#insertBefore(behind, key, fresh);
    this.#perAddress.set(who.address, held + 1);
    const position = this.#indexOf(key) + 1;
    return this.#wait(fresh, position, now, true, this.retryAfterSeconds(position));
  }

  /** The requester (queued: its last decision was `wait`) is held open now: a freed slot goes to it (admitNext). */
  hold(who: Requester): void {
    const entry = this.#queue.get(requesterKey(who));
    if (!entry) return;
    entry.present = true;
    entry.expiresAt = Infinity;
  }

  /**
   * Its hold ended without a slot (ran out, or the client went away): it keeps its place and is
   * told to come back at once (RETRY_AFTER_HELD_SECONDS). Null when it has no place any more.
   */
  letGo(who: Requester, now: number): Extract<AdmissionDecision, { kind: 'wait' }> | null {
    const key = requesterKey(who);
    const entry = this.#queue.get(key);
    if (!entry) return null;
    entry.present = false;
    return this.#wait(entry, this.#indexOf(key) + 1, now, false, RETRY_AFTER_HELD_SECONDS);
  }

  /** Admits the first present waiter a free slot is not owed ahead of, if any: the caller hands it the slot. */
  admitNext(now: number): { key: string; decision: Extract<AdmissionDecision, { kind: 'admit' }> } | null {
    this.#expire(now);
    let owed = 0;
    const free = this.#free();
    if (free <= 0) return null;
    for (const [key, entry] of this.#queue) {
      if (entry.present) {
        this.#skipAhead(key);
        this.#forget(key);
        return { key, decision: this.#admit(now, key, entry) };
      }
      if (entry.skipped && ++owed >= free) return null;
    }
    return null;
  }

  /** How many requests are being held open. */
  get present(): number {
    let n = 0;
    for (const entry of this.#queue.values()) if (entry.present) n++;
    return n;
  }

  /**
   * The stream of `ticket` ended. Idempotent. A complete stream's duration feeds the mean that
   * Retry-After estimates come from (an aborted one says nothing about how long streams take).
   */
  release(ticket: Ticket, now: number, complete = true): void {
    const stream = this.#active.get(ticket.id);
    if (stream === undefined) return;
    this.#active.delete(ticket.id);
    // Only the arrival this stream counted on, if it is still carried (not replaced, used up or forgotten since).
    const { key, arrival } = stream;
    if (arrival && this.#arrivals.get(key) === arrival && arrival.running > 0 && --arrival.running === 0) arrival.expiresAt = now + CARRY_MS;
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

  #free(): number {
    return this.#limits.maxActive === 0 ? Infinity : this.#limits.maxActive - this.#active.size;
  }

  /**
   * Whether a free slot is there for the requester just ahead of `key` (a waiter's own key, or the
   * place a newcomer would take; null: the end of the line): one is owed to every present or
   * skipped waiter ahead. Absent waiters passed over are marked skipped.
   */
  #slotAhead(key: string | null): boolean {
    let owed = 0;
    for (const [k, entry] of this.#queue) {
      if (k === key) break;
      if (entry.present || entry.skipped) owed++;
    }
    if (this.#free() <= owed) return false;
    this.#skipAhead(key);
    return true;
  }

  #skipAhead(key: string | null): void {
    for (const [k, entry] of this.#queue) {
      if (k === key) break;
      if (!entry.present) entry.skipped = true;
    }
  }

  #admit(now: number, key: string, entry?: Entry): Extract<AdmissionDecision, { kind: 'admit' }> {
    const ticket: Ticket = { id: this.#nextTicket++, startedAt: now };
    // A waiter whose carried arrival was forgotten while it waited starts a new one from its own request (firstSeen), not from the old time.
    this.#active.set(ticket.id, { key, arrival: this.#carry(key, entry?.firstSeen ?? now) });
    return entry ? { kind: 'admit', ticket, waited: { ms: now - entry.firstSeen, retries: entry.retries } } : { kind: 'admit', ticket };
  }

  /**
   * Counts a stream admitted on `key`'s arrival (`at` when it has none; an expired one was
   * dropped when the request came in): carried for its next
   * requests until it has had carriedStreams. Returns the arrival while it is carried.
   */
  #carry(key: string, at: number): Arrival | undefined {
    if (this.#carriedStreams === 0 || this.#limits.maxActive === 0) return undefined;
    const arrival = this.#arrivals.get(key) ?? { at, streams: 0, running: 0, expiresAt: Infinity };
    arrival.streams++;
    arrival.running++;
    arrival.expiresAt = Infinity;
    this.#arrivals.delete(key);
    if (arrival.streams >= this.#carriedStreams) return undefined;
    this.#arrivals.set(key, arrival);
    this.#trimArrivals();
    return arrival;
  }

  /** Forgets the least recently touched arrivals beyond maxQueued. */
  #trimArrivals(): void {
    for (const oldest of this.#arrivals.keys()) {
      if (this.#arrivals.size <= this.#limits.maxQueued) break;
      this.#arrivals.delete(oldest);
    }
  }

  /** `key`'s first arrival, if it is still carried. */
  #carriedArrival(key: string, now: number): number | undefined {
    const arrival = this.#arrivals.get(key);
    if (!arrival) return undefined;
    if (arrival.expiresAt > now) return arrival.at;
    this.#arrivals.delete(key);
    return undefined;
  }

  /** The key of the first waiter that arrived after `arrivedAt` (a newcomer's place is just ahead of it), or null: the end of the line. */
  #firstArrivedAfter(arrivedAt: number): string | null {
    for (const [key, entry] of this.#queue) if (entry.arrivedAt > arrivedAt) return key;
    return null;
  }

  #insertBefore(behind: string | null, key: string, entry: Entry): void {
    if (behind === null) {
      this.#queue.set(key, entry);
      return;
    }
    const all = [...this.#queue];
    this.#queue.clear();
    for (const [k, e] of all) {
      if (k === behind) this.#queue.set(key, entry);
      this.#queue.set(k, e);
    }
  }

  #wait(entry: Entry, position: number, now: number, first: boolean, retryAfterSeconds: number): Extract<AdmissionDecision, { kind: 'wait' }> {
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

/** The queue key of a requester: its address and the MAC it names. */
export function requesterKey(who: Requester): string {
  return `${who.address} ${who.machine ?? ''}`;
}

function checkLimits(limits: AdmissionLimits): AdmissionLimits {
  for (const [name, value] of Object.entries(limits)) {
    const min = name === 'maxActive' ? 0 : 1;
    if (!Number.isInteger(value) || value < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  }
  return { ...limits };
}
