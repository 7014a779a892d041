import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { intToIp, ipToInt } from '../config/ipv4.ts';
import { writeFileAtomic } from '../fs/atomic-write.ts';

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
/** DISCOVER retransmissions a client may make (with new xids) before its REQUEST still matches. */
const XIDS_PER_OFFER = 4;

export class LeaseStore {
  /** Bound lease records by MAC (expired ones included). */
  readonly #bound = new Map<string, Lease>();
  /** ip -> MAC of the bound record for it (one record per address) */
  readonly #boundByIp = new Map<string, string>();
  readonly #offers = new Map<string, Offer>();
  /** ip -> MAC of the offer for it */
  readonly #offerByIp = new Map<string, string>();
  readonly #declined = new Map<string, { until: number; mac: string | undefined }>();
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
        if (typeof lease.mac === 'string' && typeof lease.ip === 'string' && typeof lease.expiresAt === 'number') {
          store.#setBound({ mac: lease.mac, ip: lease.ip, expiresAt: lease.expiresAt, state: 'bound' });
        }
      }
      for (const [ip, until] of Object.entries(data.declined ?? {})) {
        if (typeof until === 'number') store.#declined.set(ip, { until, mac: data.declinedBy?.[ip] });
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
    const entry = this.#declined.get(ip);
    return entry !== undefined && entry.until > this.now();
  }

  /** The MAC holding `ip` with an unexpired lease or offer, if any. */
  holder(ip: string): string | undefined {
    const now = this.now();
    const boundMac = this.#boundByIp.get(ip);
    const lease = boundMac === undefined ? undefined : this.#bound.get(boundMac);
    if (lease && lease.expiresAt > now) return lease.mac;
    const offerMac = this.#offerByIp.get(ip);
    const offer = offerMac === undefined ? undefined : this.#offers.get(offerMac);
    return offer && offer.expiresAt > now ? offer.mac : undefined;
  }

  /** Can `mac` have `ip`? Its reservation always; else a pool address nobody else holds, not excluded or declined. */
  available(mac: string, ip: string, pool: PoolSpec, reservedIp: string | undefined): boolean {
    const holder = this.holder(ip);
    if (holder !== undefined && holder !== mac) return false;
    if (reservedIp !== undefined) return ip === reservedIp;
    return inPool(ip, pool) && !pool.excluded.has(ip) && !this.isDeclined(ip);
  }

  /** Addresses held right now by unknown MACs: bound, offered or declined by them. */
  heldByUnknown(limit: Pick<UnknownLimit, 'isKnown'>): number {
    const now = this.now();
    const held = new Set<string>();
    for (const lease of this.#bound.values()) if (lease.expiresAt > now && !limit.isKnown(lease.mac)) held.add(lease.ip);
    for (const offer of this.#offers.values()) if (offer.expiresAt > now && !limit.isKnown(offer.mac)) held.add(offer.ip);
    for (const [ip, { until, mac }] of this.#declined) if (until > now && mac !== undefined && !limit.isKnown(mac)) held.add(ip);
    return held.size;
  }

  /** Whether `mac` may take one more address under the unknown-MAC cap (known MACs and current holders always may). */
  withinUnknownCap(mac: string, limit: UnknownLimit | undefined): boolean {
    if (!limit || limit.isKnown(mac)) return true;
    if (this.active(mac) || this.offerTo(mac)) return true;
    return this.heldByUnknown(limit) < limit.max;
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
    let ip = this.#choose(mac, pool, reservedIp, requested);
    if (ip === null && limit?.isKnown(mac) && this.#reclaimUnknownOffer(limit)) ip = this.#choose(mac, pool, reservedIp, requested);
    if (ip === null) return { ip: null, reason: 'pool-exhausted' };
    const existing = this.#offers.get(mac);
    const xids = existing?.ip === ip ? [...existing.xids.filter((x) => x !== xid), xid].slice(-XIDS_PER_OFFER) : [xid];
    this.#removeOffer(mac);
    // An expired offer of another MAC for the same address is forgotten.
    const stale = this.#offerByIp.get(ip);
    if (stale !== undefined) this.#removeOffer(stale);
    this.#offers.set(mac, { mac, ip, xids, expiresAt: this.now() + OFFER_HOLD_MS });
    this.#offerByIp.set(ip, mac);
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

  #choose(mac: string, pool: PoolSpec, reservedIp: string | undefined, requested: string | undefined): string | null {
    if (reservedIp !== undefined) return this.available(mac, reservedIp, pool, reservedIp) ? reservedIp : null;
    const previous = this.#bound.get(mac)?.ip;
    if (previous && this.available(mac, previous, pool, undefined)) return previous;
    const offered = this.offerTo(mac)?.ip;
    if (offered && this.available(mac, offered, pool, undefined)) return offered;
    if (requested && this.available(mac, requested, pool, undefined)) return requested;
    let oldest: { ip: string; expiredAt: number } | null = null;
    for (let n = ipToInt(pool.start); n <= ipToInt(pool.end); n++) {
      const ip = intToIp(n);
      if (!this.available(mac, ip, pool, undefined)) continue;
      const recordMac = this.#boundByIp.get(ip);
      const expiredAt = recordMac === undefined ? undefined : this.#bound.get(recordMac)?.expiresAt;
      if (expiredAt === undefined) return ip;
      if (!oldest || expiredAt < oldest.expiredAt) oldest = { ip, expiredAt };
    }
    return oldest?.ip ?? null;
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

  /** Offers and declines that ran out (bounded anyway: one per address; this keeps scans short). */
  #dropExpired(): void {
    const now = this.now();
    for (const offer of [...this.#offers.values()]) if (offer.expiresAt <= now) this.#removeOffer(offer.mac);
    for (const [ip, entry] of [...this.#declined]) if (entry.until <= now) this.#declined.delete(ip);
  }

  #removeOffer(mac: string): void {
    const offer = this.#offers.get(mac);
    if (!offer) return;
    this.#offers.delete(mac);
    if (this.#offerByIp.get(offer.ip) === mac) this.#offerByIp.delete(offer.ip);
  }

  /** Sets a MAC's bound lease; an (expired) record of another MAC for the same address is dropped. */
  #setBound(lease: Lease): void {
    this.#removeBound(lease.mac);
    const other = this.#boundByIp.get(lease.ip);
    if (other !== undefined) this.#removeBound(other);
    this.#bound.set(lease.mac, lease);
    this.#boundByIp.set(lease.ip, lease.mac);
  }

  #removeBound(mac: string): void {
    const lease = this.#bound.get(mac);
    if (!lease) return;
    this.#bound.delete(mac);
    if (this.#boundByIp.get(lease.ip) === mac) this.#boundByIp.delete(lease.ip);
  }

  /**
   * Binds `ip` to `mac` for `seconds` (a new lease or an extended one) and ends its offer.
   * false when the address is not the client's to have. The caller decides whether the
   * REQUEST earned it (RFC 2131 4.3.2: an offer we made, or the address already bound).
   */
  bind(mac: string, ip: string, seconds: number, pool: PoolSpec, reservedIp: string | undefined): boolean {
    if (!this.available(mac, ip, pool, reservedIp)) return false;
    this.#removeOffer(mac);
    const staleOffer = this.#offerByIp.get(ip);
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
    this.#removeOffer(mac);
    this.#save();
    return true;
  }

  /** DECLINE: the address `mac` was given is in use by someone else; nobody gets it for `seconds`. */
  decline(mac: string, ip: string, seconds: number): boolean {
    const bound = this.#bound.get(mac)?.ip === ip;
    const offered = this.#offers.get(mac)?.ip === ip;
    if (!bound && !offered) return false;
    if (bound) this.#removeBound(mac);
    if (offered) this.#removeOffer(mac);
    this.#declined.set(ip, { until: this.now() + seconds * 1000, mac });
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
    const declined = [...this.#declined].filter(([, entry]) => entry.until > now);
    return {
      version: 1,
      leases: [...this.#bound.values()].map((l) => ({ ...l })),
      declined: Object.fromEntries(declined.map(([ip, entry]) => [ip, entry.until])),
      declinedBy: Object.fromEntries(declined.flatMap(([ip, entry]) => (entry.mac === undefined ? [] : [[ip, entry.mac]]))),
    };
  }
}
