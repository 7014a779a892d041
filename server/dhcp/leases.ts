import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { intToIp, ipToInt } from '../config/ipv4.ts';

export { intToIp, ipToInt };

/**
 * Full-mode address bookkeeping: a pool plus static reservations, leases that expire,
 * addresses declined by clients (someone else answers ARP for them) kept out for a while.
 * State changes are synchronous (one packet at a time); persistence to `<stateDir>/leases.json`
 * follows asynchronously, written to a temp file and renamed so a crash never leaves half a file.
 */

export interface Lease {
  mac: string;
  ip: string;
  /** ms since the epoch */
  expiresAt: number;
  /** offered: held for the client between OFFER and REQUEST (not persisted); bound: ACKed. */
  state: 'offered' | 'bound';
}

export interface PoolSpec {
  start: string;
  end: string;
  /** Addresses that are never handed out dynamically (the server's own, other machines' reservations). */
  excluded: ReadonlySet<string>;
}

interface Persisted {
  version: 1;
  leases: Lease[];
  /** ip -> ms since the epoch until which it stays out of use */
  declined: Record<string, number>;
}

export function inPool(ip: string, pool: Pick<PoolSpec, 'start' | 'end'>): boolean {
  const n = ipToInt(ip);
  return n >= ipToInt(pool.start) && n <= ipToInt(pool.end);
}

export function sameSubnet(a: string, b: string, netmask: string): boolean {
  const mask = ipToInt(netmask);
  return ((ipToInt(a) & mask) >>> 0) === ((ipToInt(b) & mask) >>> 0);
}

/** How long an OFFER holds an address for the client that was offered it. */
const OFFER_HOLD_MS = 60_000;

export class LeaseStore {
  /** by MAC */
  readonly #leases = new Map<string, Lease>();
  /** ip -> mac of the lease holding it (one lease per address) */
  readonly #byIp = new Map<string, string>();
  readonly #declined = new Map<string, number>();
  #saving: Promise<void> = Promise.resolve();
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
          store.#put({ mac: lease.mac, ip: lease.ip, expiresAt: lease.expiresAt, state: 'bound' });
        }
      }
      for (const [ip, until] of Object.entries(data.declined ?? {})) if (typeof until === 'number') store.#declined.set(ip, until);
    } catch (err) {
      options.warn?.(`${file} is not valid lease JSON (${(err as Error).message}); starting with no leases`);
    }
    return store;
  }

  /** Every lease, expired ones included (a client gets its old address back when it is still free). */
  list(): Lease[] {
    return [...this.#leases.values()].map((l) => ({ ...l }));
  }

  /** Whether there is any record (expired or not) of the client. */
  knows(mac: string): boolean {
    return this.#leases.has(mac);
  }

  /** The client's current, unexpired lease. */
  active(mac: string): Lease | undefined {
    const lease = this.#leases.get(mac);
    return lease && lease.expiresAt > this.now() ? { ...lease } : undefined;
  }

  isDeclined(ip: string): boolean {
    const until = this.#declined.get(ip);
    return until !== undefined && until > this.now();
  }

  /** The MAC holding `ip` with an unexpired lease, if any. */
  holder(ip: string): string | undefined {
    const mac = this.#byIp.get(ip);
    const lease = mac === undefined ? undefined : this.#leases.get(mac);
    return lease && lease.expiresAt > this.now() ? lease.mac : undefined;
  }

  /** Can `mac` have `ip`? Its reservation always; else a pool address nobody else holds, not excluded or declined. */
  available(mac: string, ip: string, pool: PoolSpec, reservedIp: string | undefined): boolean {
    const holder = this.holder(ip);
    if (holder !== undefined && holder !== mac) return false;
    if (reservedIp !== undefined) return ip === reservedIp;
    return inPool(ip, pool) && !pool.excluded.has(ip) && !this.isDeclined(ip);
  }

  /**
   * Picks an address for a DISCOVER and holds it for a minute: the reservation, else the
   * client's previous address, else the one it asks for, else the lowest never-leased free
   * address, else the one expired longest ago. null when the pool is exhausted.
   */
  offer(mac: string, pool: PoolSpec, reservedIp: string | undefined, requested: string | undefined): string | null {
    const ip = this.#choose(mac, pool, reservedIp, requested);
    if (ip === null) return null;
    const existing = this.#leases.get(mac);
    const hold = this.now() + OFFER_HOLD_MS;
    // An offer never shortens a bound lease of the same address.
    if (existing && existing.ip === ip && existing.state === 'bound' && existing.expiresAt > hold) return ip;
    this.#put({ mac, ip, expiresAt: hold, state: existing?.ip === ip && existing.state === 'bound' ? 'bound' : 'offered' });
    return ip;
  }

  #choose(mac: string, pool: PoolSpec, reservedIp: string | undefined, requested: string | undefined): string | null {
    if (reservedIp !== undefined) return this.available(mac, reservedIp, pool, reservedIp) ? reservedIp : null;
    const previous = this.#leases.get(mac)?.ip;
    if (previous && this.available(mac, previous, pool, undefined)) return previous;
    if (requested && this.available(mac, requested, pool, undefined)) return requested;
    const everLeased = new Map<string, number>();
    for (const lease of this.#leases.values()) everLeased.set(lease.ip, lease.expiresAt);
    let oldest: { ip: string; expiredAt: number } | null = null;
    for (let n = ipToInt(pool.start); n <= ipToInt(pool.end); n++) {
      const ip = intToIp(n);
      if (!this.available(mac, ip, pool, undefined)) continue;
      const expiredAt = everLeased.get(ip);
      if (expiredAt === undefined) return ip;
      if (!oldest || expiredAt < oldest.expiredAt) oldest = { ip, expiredAt };
    }
    if (oldest) this.#forgetIp(oldest.ip);
    return oldest?.ip ?? null;
  }

  #forgetIp(ip: string): void {
    const mac = this.#byIp.get(ip);
    if (mac !== undefined) this.#remove(mac);
  }

  /** Sets a MAC's lease; an (expired) record of another MAC for the same address is dropped. */
  #put(lease: Lease): void {
    this.#remove(lease.mac);
    const other = this.#byIp.get(lease.ip);
    if (other !== undefined) this.#remove(other);
    this.#leases.set(lease.mac, lease);
    this.#byIp.set(lease.ip, lease.mac);
  }

  #remove(mac: string): void {
    const lease = this.#leases.get(mac);
    if (!lease) return;
    this.#leases.delete(mac);
    if (this.#byIp.get(lease.ip) === mac) this.#byIp.delete(lease.ip);
  }

  /** REQUEST accepted: binds `ip` to `mac` for `seconds`. false when the address is not the client's to have. */
  bind(mac: string, ip: string, seconds: number, pool: PoolSpec, reservedIp: string | undefined): boolean {
    if (!this.available(mac, ip, pool, reservedIp)) return false;
    this.#forgetIp(ip);
    this.#put({ mac, ip, expiresAt: this.now() + seconds * 1000, state: 'bound' });
    this.#save();
    return true;
  }

  /** RELEASE: the client gives the address back (kept in the table so it gets it again next time). */
  release(mac: string, ip: string): boolean {
    const lease = this.#leases.get(mac);
    if (!lease || lease.ip !== ip) return false;
    lease.expiresAt = Math.min(lease.expiresAt, this.now());
    this.#save();
    return true;
  }

  /** DECLINE: the address is in use by someone else; nobody gets it for `seconds`. */
  decline(mac: string, ip: string, seconds: number): boolean {
    const lease = this.#leases.get(mac);
    if (!lease || lease.ip !== ip) return false;
    this.#remove(mac);
    this.#declined.set(ip, this.now() + seconds * 1000);
    this.#save();
    return true;
  }

  /** Drops an unanswered offer (the client chose another server). */
  withdrawOffer(mac: string): void {
    const lease = this.#leases.get(mac);
    if (lease?.state === 'offered') this.#remove(mac);
  }

  /** Resolves when every change so far is on disk; rejects with the last write error. */
  async flush(): Promise<void> {
    await this.#saving;
    if (this.#saveError) throw this.#saveError;
  }

  #save(): void {
    const file = this.file;
    if (!file) return;
    this.#saving = this.#saving.then(async () => {
      const now = this.now();
      const data: Persisted = {
        version: 1,
        leases: [...this.#leases.values()].filter((l) => l.state === 'bound').map((l) => ({ ...l })),
        declined: Object.fromEntries([...this.#declined].filter(([, until]) => until > now)),
      };
      const temp = `${file}.${process.pid}.tmp`;
      try {
        await mkdir(dirname(file), { recursive: true });
        await writeFile(temp, JSON.stringify(data, null, 2) + '\n');
        await rename(temp, file);
        this.#saveError = null;
      } catch (err) {
        this.#saveError = err as Error;
      }
    });
  }
}
