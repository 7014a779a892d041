import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { intToIp, ipToInt } from '../config/ipv4.ts';
import { writeFileAtomic } from '../fs/atomic-write.ts';
import { MinHeap } from './min-heap.ts';

export { intToIp, ipToInt };

/**
 * Full-mode address bookkeeping: a pool plus static reservations, offers (an address held for
 * the MAC and transaction it was offered to, between OFFER and REQUEST), bound leases that
 * expire, and addresses declined by clients (someone else answers ARP for them) kept out for a
 * while. State changes are synchronous (one packet at a time); persistence of bound leases and
 * declines to `<stateDir>/leases.json` follows asynchronously (temp file, fsync, rename, fsync
 * of the directory: a crash leaves the old file or the new one, never half of one).
 *
 * Everything here is bounded by the pool: one offer and one lease record per address (a
 * record is dropped when its address goes to another MAC), one offer per MAC.
 */

/** A bound (ACKed) lease. Records stay after expiry so a client gets its old address back when still free. */
export interface Lease {
  mac: string;
  ip: string;
  /** ms since the epoch */
  expiresAt: number;
  state: 'bound';
}

/** An address held for one MAC between OFFER and REQUEST; never persisted. */
export interface Offer {
  mac: string;
  ip: string;
  /** ms since the epoch */
  expiresAt: number;
  /** Transaction ids of the DISCOVERs it answered (newest last): a SELECTING REQUEST must carry one of them. */
  xids: number[];
}

export interface PoolSpec {
  start: string;
  end: string;
  /** Addresses that are never handed out dynamically (the server's own, other machines' reservations). */
  excluded: ReadonlySet<string>;
}

/** Who counts as unknown (a MAC not in the config) and how many addresses unknown MACs may hold at once. */
export interface UnknownLimit {
  isKnown(mac: string): boolean;
  max: number;
}

export type OfferResult = { ip: string } | { ip: null; reason: 'pool-exhausted' | 'unknown-lease-cap' };

/** Why a SELECTING REQUEST does not match an offer. */
export type OfferMismatch = 'no-offer' | 'other-address' | 'other-xid';

interface Persisted {
  version: 1;
  leases: Lease[];
  /** ip -> ms since the epoch until which it stays out of use */
  declined: Record<string, number>;
  /** ip -> the MAC that declined it (counts against the unknown-MAC cap when that MAC is unknown) */
  declinedBy?: Record<string, string>;
}

export function inPool(ip: string, pool: Pick<PoolSpec, 'start' | 'end'>): boolean {
  const n = ipToInt(ip);
  return n >= ipToInt(pool.start) && n <= ipToInt(pool.end);
}

export function poolSize(pool: Pick<PoolSpec, 'start' | 'end'>): number {
  return Math.max(0, ipToInt(pool.end) - ipToInt(pool.start) + 1);
}

/** server.dhcp.pool.maxUnknownLeases when set, else half the pool (at least 1, at most 256). */
export function unknownLeaseCap(pool: { start: string; end: string; maxUnknownLeases?: number | undefined }): number {
  if (pool.maxUnknownLeases !== undefined) return pool.maxUnknownLeases;
  return Math.min(256, Math.max(1, Math.floor(poolSize(pool) / 2)));
}

export function sameSubnet(a: string, b: string, netmask: string): boolean {
  const mask = ipToInt(netmask);
  return ((ipToInt(a) & mask) >>> 0) === ((ipToInt(b) & mask) >>> 0);
}

/** How long an OFFER holds an address for the client that was offered it. */
export const OFFER_HOLD_MS = 60_000;
/** How long the unknown-MAC cap reuses its count of addresses held by unknown MACs (see LeaseStore#unknownCount). */
const UNKNOWN_COUNT_TTL_MS = 1000;
/** DISCOVER retransmissions a client may make (with new xids) before its REQUEST still matches. */
const XIDS_PER_OFFER = 4;

/**
 * A dotted quad as an unsigned 32-bit integer, or null when it is not one in canonical form
 * (no leading zeros, 4 parts of 0-255): the key of every per-address table here.
 */
export function parseIp(ip: string): number | null {
  let n = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || dots === 3) return null;
      n = n * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && part === 0) return null;
      part = part * 10 + (c - 48);
      digits++;
      if (part > 255) return null;
    } else {
      return null;
    }
  }
  return dots === 3 && digits > 0 ? n * 256 + part : null;
}

interface Expiry {
  at: number;
  n: number;
}

const earlier = (a: Expiry, b: Expiry): boolean => a.at < b.at || (a.at === b.at && a.n < b.n);

/**
 * What the allocator knows about one pool spec (rebuilt when the pool or its exclusions
 * change), so picking an address costs O(log n) amortised instead of a scan of the pool:
 * - never-leased free addresses: a cursor that walks the pool once, plus a heap of addresses
 *   behind it that became free again (an offer withdrawn or expired, a record moved, a
 *   decline ended); entries are checked when they reach the top, stale ones dropped;
 * - addresses with a bound record: a heap by expiry, also checked lazily; an entry for an
 *   address that is offered or declined is dropped and queued again when that ends.
 */
interface PoolIndex {
  start: string;
  end: string;
  excludedSet: ReadonlySet<string>;
  first: number;
  last: number;
  excluded: Set<number>;
  cursor: number;
  fresh: MinHeap<number>;
  /** Addresses in `fresh` (one entry each). */
  queued: Set<number>;
  records: MinHeap<Expiry>;
}

export class LeaseStore {
  /** Bound lease records by MAC (expired ones included). */
  readonly #bound = new Map<string, Lease>();
  /** address -> MAC of the bound record for it (one record per address) */
  readonly #boundByIp = new Map<number, string>();
  readonly #offers = new Map<string, Offer>();
  /** address -> MAC of the offer for it */
  readonly #offerByIp = new Map<number, string>();
  readonly #declined = new Map<number, { ip: string; until: number; mac: string | undefined }>();
  /** When offers and declines run out (lazily checked entries; see #dropExpired). */
  readonly #offerExpiry = new MinHeap<{ at: number; mac: string }>((a, b) => a.at < b.at);
  readonly #declineExpiry = new MinHeap<Expiry>(earlier);
  #pool: PoolIndex | null = null;
  #examined = 0;
  /**
   * The unknown-MAC cap's last count of addresses held by unknown MACs, reused for up to
   * UNKNOWN_COUNT_TTL_MS: counting walks every lease, offer and decline, and a stranger can send
   * DISCOVERs from a new MAC each time. Offers made to unknown MACs since the walk are added, so
   * the cap holds exactly; addresses given up since are still counted until the next walk.
   */
  #unknownCount: { at: number; held: number } | null = null;
  #saving: Promise<void> = Promise.resolve();
  #dirty = false;
  #writing = false;
  #saveError: Error | null = null;

  private constructor(
    readonly file: string | null,
    private readonly now: () => number,
  ) {}

  /** Opens (or starts) the lease file. A missing or unreadable file starts empty; `warn` is told why. */
  static async open(file: string | null, options: { now?: () => number; warn?: (msg: string) => void } = {}): Promise<LeaseStore> {
    const store = new LeaseStore(file, options.now ?? Date.now);
    if (!file) return store;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') options.warn?.(`cannot read ${file}: ${(err as Error).message}; starting with no leases`);
      return store;
    }
    try {
      const data = JSON.parse(text) as Persisted;
      for (const lease of data.leases ?? []) {
        if (typeof lease.mac === 'string' && typeof lease.ip === 'string' && typeof lease.expiresAt === 'number' && parseIp(lease.ip) !== null) {
          store.#setBound({ mac: lease.mac, ip: lease.ip, expiresAt: lease.expiresAt, state: 'bound' });
        }
      }
      for (const [ip, until] of Object.entries(data.declined ?? {})) {
        const n = parseIp(ip);
        if (typeof until === 'number' && n !== null) store.#setDeclined(n, ip, until, data.declinedBy?.[ip]);
      }
    } catch (err) {
      options.warn?.(`${file} is not valid lease JSON (${(err as Error).message}); starting with no leases`);
    }
    return store;
  }

  /** Every bound lease record, expired ones included. */
  list(): Lease[] {
    return [...this.#bound.values()].map((l) => ({ ...l }));
  }

  /** Unexpired offers. */
  offers(): Offer[] {
    const now = this.now();
    return [...this.#offers.values()].filter((o) => o.expiresAt > now).map((o) => ({ ...o, xids: [...o.xids] }));
  }

  /** Addresses the allocator has looked at so far (its cost, for tests: amortised O(1) per offer). */
  get examined(): number {
    return this.#examined;
  }

  /** Whether a bound lease (expired or not) of the client is on record. */
  knows(mac: string): boolean {
    return this.#bound.has(mac);
  }

  /** The client's bound lease record, expired or not. */
  record(mac: string): Lease | undefined {
    const lease = this.#bound.get(mac);
    return lease && { ...lease };
  }

  /** The client's current, unexpired bound lease (an offer is not a lease). */
  active(mac: string): Lease | undefined {
    const lease = this.#bound.get(mac);
    return lease && lease.expiresAt > this.now() ? { ...lease } : undefined;
  }

  /** The client's unexpired offer. */
  offerTo(mac: string): Offer | undefined {
    const offer = this.#offers.get(mac);
    return offer && offer.expiresAt > this.now() ? { ...offer, xids: [...offer.xids] } : undefined;
  }

  isDeclined(ip: string): boolean {
    const n = parseIp(ip);
    return n !== null && this.#declinedNow(n, this.now());
  }

  /** The MAC holding `ip` with an unexpired lease or offer, if any. */
  holder(ip: string): string | undefined {
    const n = parseIp(ip);
    return n === null ? undefined : this.#holderOf(n, this.now());
  }

  #holderOf(n: number, now: number): string | undefined {
    const boundMac = this.#boundByIp.get(n);
    const lease = boundMac === undefined ? undefined : this.#bound.get(boundMac);
    if (lease && lease.expiresAt > now) return lease.mac;
    return this.#offeredNow(n, now);
  }

  /** The MAC with an unexpired offer of address `n`. */
  #offeredNow(n: number, now: number): string | undefined {
    const offerMac = this.#offerByIp.get(n);
    const offer = offerMac === undefined ? undefined : this.#offers.get(offerMac);
    return offer && offer.expiresAt > now ? offer.mac : undefined;
  }

  #declinedNow(n: number, now: number): boolean {
    const entry = this.#declined.get(n);
    return entry !== undefined && entry.until > now;
  }

  /** Can `mac` have `ip`? Its reservation always; else a pool address nobody else holds, not excluded or declined. */
  available(mac: string, ip: string, pool: PoolSpec, reservedIp: string | undefined): boolean {
    const holder = this.holder(ip);
    if (holder !== undefined && holder !== mac) return false;
    if (reservedIp !== undefined) return ip === reservedIp;
    return parseIp(ip) !== null && inPool(ip, pool) && !pool.excluded.has(ip) && !this.isDeclined(ip);
  }

  /** Addresses held right now by unknown MACs: bound, offered or declined by them. */
  heldByUnknown(limit: Pick<UnknownLimit, 'isKnown'>): number {
    const now = this.now();
    const held = new Set<string>();
    for (const lease of this.#bound.values()) if (lease.expiresAt > now && !limit.isKnown(lease.mac)) held.add(lease.ip);
    for (const offer of this.#offers.values()) if (offer.expiresAt > now && !limit.isKnown(offer.mac)) held.add(offer.ip);
    for (const { ip, until, mac } of this.#declined.values()) if (until > now && mac !== undefined && !limit.isKnown(mac)) held.add(ip);
    return held.size;
  }

  /** Whether `mac` may take one more address under the unknown-MAC cap (known MACs and current holders always may). */
  withinUnknownCap(mac: string, limit: UnknownLimit | undefined): boolean {
    if (!this.#takesUnknownPlace(mac, limit)) return true;
    const now = this.now();
    if (!this.#unknownCount || now - this.#unknownCount.at >= UNKNOWN_COUNT_TTL_MS || now < this.#unknownCount.at) {
      this.#unknownCount = { at: now, held: this.heldByUnknown(limit!) };
    }
    return this.#unknownCount.held < limit!.max;
  }

  /** An unknown MAC that holds nothing yet: an address for it is one more under the cap. */
  #takesUnknownPlace(mac: string, limit: UnknownLimit | undefined): boolean {
    return limit !== undefined && !limit.isKnown(mac) && !this.active(mac) && !this.offerTo(mac);
  }

  /**
   * Picks an address for a DISCOVER and holds it for a minute for this MAC and transaction:
   * the reservation, else the client's previous address, else the one already offered to it,
   * else the one it asks for, else the lowest never-leased free address, else the one expired
   * longest ago. Unknown MACs (per `limit`) are refused beyond the cap; a known MAC that finds
   * the pool full takes back the oldest offer made to an unknown MAC.
   */
  offer(mac: string, xid: number, pool: PoolSpec, reservedIp: string | undefined, requested: string | undefined, limit?: UnknownLimit): OfferResult {
    this.#dropExpired();
    if (!this.withinUnknownCap(mac, limit)) return { ip: null, reason: 'unknown-lease-cap' };
    const newUnknownHolder = this.#takesUnknownPlace(mac, limit);
    let ip = this.#choose(mac, pool, reservedIp, requested);
    if (ip === null && limit?.isKnown(mac) && this.#reclaimUnknownOffer(limit)) ip = this.#choose(mac, pool, reservedIp, requested);
    if (ip === null) return { ip: null, reason: 'pool-exhausted' };
    const n = parseIp(ip);
    // A reservation that is not a dotted quad cannot be keyed (config validation makes this unreachable).
    if (n === null) return { ip: null, reason: 'pool-exhausted' };
    const existing = this.#offers.get(mac);
    const xids = existing?.ip === ip ? [...existing.xids.filter((x) => x !== xid), xid].slice(-XIDS_PER_OFFER) : [xid];
    this.#removeOffer(mac);
    // An expired offer of another MAC for the same address is forgotten.
    const stale = this.#offerByIp.get(n);
    if (stale !== undefined) this.#removeOffer(stale);
    const expiresAt = this.now() + OFFER_HOLD_MS;
    this.#offers.set(mac, { mac, ip, xids, expiresAt });
    this.#offerByIp.set(n, mac);
    this.#offerExpiry.push({ at: expiresAt, mac });
    if (newUnknownHolder && this.#unknownCount) this.#unknownCount.held++;
    if (this.#offerExpiry.size > 2 * this.#offers.size + 64) {
      const seen = new Set<string>();
      this.#offerExpiry.rebuild((e) => this.#offers.get(e.mac)?.expiresAt === e.at && !seen.has(e.mac) && seen.add(e.mac) !== undefined);
    }
    return { ip };
  }

  /** Whether a SELECTING REQUEST (`ip` in option 50, transaction `xid`) answers an offer we made to `mac`. */
  matchOffer(mac: string, ip: string, xid: number): { ok: true } | { ok: false; why: OfferMismatch; offered?: string } {
    const offer = this.offerTo(mac);
    if (!offer) return { ok: false, why: 'no-offer' };
    if (offer.ip !== ip) return { ok: false, why: 'other-address', offered: offer.ip };
    if (!offer.xids.includes(xid)) return { ok: false, why: 'other-xid', offered: offer.ip };
    return { ok: true };
  }

  /** Runs right after #dropExpired: every offer and decline on record is unexpired. */
  #choose(mac: string, pool: PoolSpec, reservedIp: string | undefined, requested: string | undefined): string | null {
    if (reservedIp !== undefined) return this.available(mac, reservedIp, pool, reservedIp) ? reservedIp : null;
    const previous = this.#bound.get(mac)?.ip;
    if (previous && this.available(mac, previous, pool, undefined)) return previous;
    const offered = this.offerTo(mac)?.ip;
    if (offered && this.available(mac, offered, pool, undefined)) return offered;
    if (requested && this.available(mac, requested, pool, undefined)) return requested;
    // What is left never returns an address of this MAC: its own record and offer were just refused.
    const index = this.#indexFor(pool);
    const now = this.now();
    const fresh = this.#lowestNeverLeased(index, now);
    if (fresh !== null) return intToIp(fresh);
    const expired = this.#longestExpired(index, now);
    return expired === null ? null : intToIp(expired);
  }

  #indexFor(pool: PoolSpec): PoolIndex {
    const current = this.#pool;
    if (current && current.start === pool.start && current.end === pool.end && current.excludedSet === pool.excluded) return current;
    const excluded = new Set<number>();
    for (const ip of pool.excluded) {
      const n = parseIp(ip);
      if (n !== null) excluded.add(n);
    }
    const first = parseIp(pool.start) ?? ipToInt(pool.start);
    const last = parseIp(pool.end) ?? ipToInt(pool.end);
    const index: PoolIndex = {
      start: pool.start,
      end: pool.end,
      excludedSet: pool.excluded,
      first,
      last,
      excluded,
      cursor: first,
      fresh: new MinHeap<number>((a, b) => a < b),
      queued: new Set(),
      records: new MinHeap<Expiry>(earlier),
    };
    this.#pool = index;
    for (const [n, mac] of this.#boundByIp) {
      const lease = this.#bound.get(mac);
      if (lease && this.#pooled(index, n)) index.records.push({ at: lease.expiresAt, n });
    }
    return index;
  }

  #pooled(index: PoolIndex, n: number): boolean {
    return n >= index.first && n <= index.last && !index.excluded.has(n);
  }

  /** In the pool, never leased (no record), not offered, not declined. */
  #neverLeasedFree(index: PoolIndex, n: number, now: number): boolean {
    this.#examined++;
    return this.#pooled(index, n) && !this.#boundByIp.has(n) && this.#offeredNow(n, now) === undefined && !this.#declinedNow(n, now);
  }

  #lowestNeverLeased(index: PoolIndex, now: number): number | null {
    for (let top = index.fresh.peek(); top !== undefined && !this.#neverLeasedFree(index, top, now); top = index.fresh.peek()) {
      index.fresh.pop();
      index.queued.delete(top);
    }
    // Addresses the cursor passes by are queued in `fresh` when they become free (#freed).
    while (index.cursor <= index.last && !this.#neverLeasedFree(index, index.cursor, now)) index.cursor++;
    const queued = index.fresh.peek();
    const ahead = index.cursor <= index.last ? index.cursor : undefined;
    if (queued === undefined) return ahead ?? null;
    return ahead === undefined || queued < ahead ? queued : ahead;
  }

  /** The pool address whose record expired longest ago (lowest first among equals), not offered or declined. */
  #longestExpired(index: PoolIndex, now: number): number | null {
    for (let top = index.records.peek(); top !== undefined; top = index.records.peek()) {
      this.#examined++;
      const mac = this.#boundByIp.get(top.n);
      const lease = mac === undefined ? undefined : this.#bound.get(mac);
      if (lease && lease.expiresAt === top.at) {
        if (top.at > now) return null; // the earliest record has not expired: none has
        if (this.#offeredNow(top.n, now) === undefined && !this.#declinedNow(top.n, now)) return top.n;
        // Offered or declined: queued again when that ends (#freed).
      }
      index.records.pop();
    }
    return null;
  }

  /** Address `n` may have become free (an offer, record or decline of it ended): the allocator looks at it again. */
  #freed(n: number): void {
    const index = this.#pool;
    if (!index || !this.#pooled(index, n)) return;
    const mac = this.#boundByIp.get(n);
    const lease = mac === undefined ? undefined : this.#bound.get(mac);
    if (lease) {
      this.#queueRecord(index, n, lease.expiresAt);
    } else if (!index.queued.has(n)) {
      index.queued.add(n);
      index.fresh.push(n);
    }
  }

  #queueRecord(index: PoolIndex, n: number, at: number): void {
    if (!this.#pooled(index, n)) return;
    index.records.push({ at, n });
    if (index.records.size > 2 * this.#bound.size + 64) {
      const seen = new Set<number>();
      index.records.rebuild((e) => {
        const mac = this.#boundByIp.get(e.n);
        return mac !== undefined && this.#bound.get(mac)?.expiresAt === e.at && !seen.has(e.n) && seen.add(e.n) !== undefined;
      });
    }
  }

  /** Frees the address of the oldest offer made to an unknown MAC (one it does not also hold bound). */
  #reclaimUnknownOffer(limit: UnknownLimit): boolean {
    let oldest: Offer | undefined;
    for (const offer of this.#offers.values()) {
      if (limit.isKnown(offer.mac) || this.active(offer.mac)?.ip === offer.ip) continue;
      if (!oldest || offer.expiresAt < oldest.expiresAt) oldest = offer;
    }
    if (!oldest) return false;
    this.#removeOffer(oldest.mac);
    return true;
  }

  /** Offers and declines that ran out: taken off their expiry heaps, O(log n) each. */
  #dropExpired(): void {
    const now = this.now();
    for (let top = this.#offerExpiry.peek(); top !== undefined && top.at <= now; top = this.#offerExpiry.peek()) {
      this.#offerExpiry.pop();
      const offer = this.#offers.get(top.mac);
      if (offer && offer.expiresAt <= now) this.#removeOffer(top.mac);
    }
    for (let top = this.#declineExpiry.peek(); top !== undefined && top.at <= now; top = this.#declineExpiry.peek()) {
      this.#declineExpiry.pop();
      const entry = this.#declined.get(top.n);
      if (entry && entry.until <= now) {
        this.#declined.delete(top.n);
        this.#freed(top.n);
      }
    }
  }

  #setDeclined(n: number, ip: string, until: number, mac: string | undefined): void {
    this.#declined.set(n, { ip, until, mac });
    this.#declineExpiry.push({ at: until, n });
    if (this.#declineExpiry.size > 2 * this.#declined.size + 64) {
      const seen = new Set<number>();
      this.#declineExpiry.rebuild((e) => this.#declined.get(e.n)?.until === e.at && !seen.has(e.n) && seen.add(e.n) !== undefined);
    }
  }

  #removeOffer(mac: string): void {
    const offer = this.#offers.get(mac);
    if (!offer) return;
    this.#offers.delete(mac);
    const n = parseIp(offer.ip);
    if (n !== null && this.#offerByIp.get(n) === mac) {
      this.#offerByIp.delete(n);
      this.#freed(n);
    }
  }

  /** Sets a MAC's bound lease; an (expired) record of another MAC for the same address is dropped. */
  #setBound(lease: Lease): void {
    const n = parseIp(lease.ip);
    if (n === null) return;
    this.#removeBound(lease.mac);
    const other = this.#boundByIp.get(n);
    if (other !== undefined) this.#removeBound(other);
    this.#bound.set(lease.mac, lease);
    this.#boundByIp.set(n, lease.mac);
    if (this.#pool) this.#queueRecord(this.#pool, n, lease.expiresAt);
  }

  #removeBound(mac: string): void {
    const lease = this.#bound.get(mac);
    if (!lease) return;
    this.#bound.delete(mac);
    const n = parseIp(lease.ip);
    if (n !== null && this.#boundByIp.get(n) === mac) {
      this.#boundByIp.delete(n);
      this.#freed(n);
    }
  }

  /**
   * Binds `ip` to `mac` for `seconds` (a new lease or an extended one) and ends its offer.
   * false when the address is not the client's to have. The caller decides whether the
   * REQUEST earned it (RFC 2131 4.3.2: an offer we made, or the address already bound).
   */
  bind(mac: string, ip: string, seconds: number, pool: PoolSpec, reservedIp: string | undefined): boolean {
    const n = parseIp(ip);
    if (n === null || !this.available(mac, ip, pool, reservedIp)) return false;
    this.#removeOffer(mac);
    const staleOffer = this.#offerByIp.get(n);
    if (staleOffer !== undefined) this.#removeOffer(staleOffer);
    this.#setBound({ mac, ip, expiresAt: this.now() + seconds * 1000, state: 'bound' });
    this.#save();
    return true;
  }

  /** RELEASE: the client gives the address back (kept in the table so it gets it again next time). */
  release(mac: string, ip: string): boolean {
    const lease = this.#bound.get(mac);
    if (!lease || lease.ip !== ip) return false;
    lease.expiresAt = Math.min(lease.expiresAt, this.now());
    const n = parseIp(ip);
    if (n !== null && this.#pool) this.#queueRecord(this.#pool, n, lease.expiresAt);
    this.#removeOffer(mac);
    this.#save();
    return true;
  }

  /** DECLINE: the address `mac` was given is in use by someone else; nobody gets it for `seconds`. */
  decline(mac: string, ip: string, seconds: number): boolean {
    const bound = this.#bound.get(mac)?.ip === ip;
    const offered = this.#offers.get(mac)?.ip === ip;
    const n = parseIp(ip);
    if ((!bound && !offered) || n === null) return false;
    // Declined first, so the address freed below is not taken for never-leased.
    this.#setDeclined(n, ip, this.now() + seconds * 1000, mac);
    if (bound) this.#removeBound(mac);
    if (offered) this.#removeOffer(mac);
    this.#save();
    return true;
  }

  /** Drops an unanswered offer (the client chose another server); with `xid`, only the offer of that transaction. */
  withdrawOffer(mac: string, xid?: number): void {
    const offer = this.#offers.get(mac);
    if (offer && (xid === undefined || offer.xids.includes(xid))) this.#removeOffer(mac);
  }

  /** Resolves when every change so far is on disk; rejects with the last write error. */
  async flush(): Promise<void> {
    await this.#saving;
    if (this.#saveError) throw this.#saveError;
  }

  /** Schedules a write; changes made while one is running are coalesced into the next one. */
  #save(): void {
    if (!this.file) return;
    this.#dirty = true;
    if (this.#writing) return;
    this.#writing = true;
    this.#saving = this.#writeLoop(this.file);
  }

  async #writeLoop(file: string): Promise<void> {
    try {
      while (this.#dirty) {
        this.#dirty = false;
        const text = JSON.stringify(this.#snapshot(), null, 2) + '\n';
        try {
          await mkdir(dirname(file), { recursive: true });
          await writeFileAtomic(file, text);
          this.#saveError = null;
        } catch (err) {
          this.#saveError = err as Error;
        }
      }
    } finally {
      this.#writing = false;
    }
  }

  #snapshot(): Persisted {
    const now = this.now();
    const declined = [...this.#declined.values()].filter((entry) => entry.until > now);
    return {
      version: 1,
      leases: [...this.#bound.values()].map((l) => ({ ...l })),
      declined: Object.fromEntries(declined.map((entry) => [entry.ip, entry.until])),
      declinedBy: Object.fromEntries(declined.flatMap((entry) => (entry.mac === undefined ? [] : [[entry.ip, entry.mac]]))),
    };
  }
}
