import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { intToIp, ipToInt, LeaseStore, type PoolSpec, type UnknownLimit } from '../../server/dhcp/leases.ts';

/**
 * The allocator at fleet scale: 5,000 MACs in a /19 (8,190 addresses). Behaviour is checked
 * against what a scan of the pool would answer (lowest never-leased address first, then the
 * one expired longest ago), and the cost by the store's own count of addresses examined, so
 * the test does not depend on the machine's speed.
 */

const FIRST = ipToInt('172.20.0.1');
const LAST = ipToInt('172.20.31.254');
const SERVER = '172.20.0.1';
/** Reservations scattered through the pool (known machines with `ip:`). */
const RESERVED = new Map<string, string>(Array.from({ length: 40 }, (_, i) => [`52:54:00:ff:00:${i.toString(16).padStart(2, '0')}`, intToIp(FIRST + 1 + i * 97)]));
const pool: PoolSpec = { start: intToIp(FIRST), end: intToIp(LAST), excluded: new Set([SERVER, ...RESERVED.values()]) };
const USABLE = LAST - FIRST + 1 - pool.excluded.size;
const XID = 0x5eed;

const mac = (batch: number, i: number) => `02:${batch.toString(16).padStart(2, '0')}:00:${(i >> 16).toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
/** The pool's addresses in order, without the excluded ones. */
const usable = (): string[] => {
  const out: string[] = [];
  for (let n = FIRST; n <= LAST; n++) if (!pool.excluded.has(intToIp(n))) out.push(intToIp(n));
  return out;
};

describe('lease allocation at fleet scale', () => {
  let dir: string;
  let clock = 1_000_000_000;
  const now = () => clock;
  const known = (m: string) => !m.startsWith('06:');
  const limit: UnknownLimit = { isKnown: known, max: 64 };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-lease-scale-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** DISCOVER then SELECTING REQUEST, as the responder does it: the offered address, bound. */
  const lease = (store: LeaseStore, m: string, seconds: number): string | null => {
    const offered = store.offer(m, XID, pool, RESERVED.get(m), undefined, limit);
    if (offered.ip === null) return null;
    expect(store.bind(m, offered.ip, seconds, pool, RESERVED.get(m))).toBe(true);
    return offered.ip;
  };

  it('5,000 MACs: distinct lowest-first addresses at O(1) examined each; expired ones reused oldest first; reservations and the cap hold', async () => {
    const file = join(dir, 'leases.json');
    const store = await LeaseStore.open(file, { now });
    const order = usable();
    const N = 5000;

    // Lease times scrambled so expiry order is not address order.
    const seconds = (i: number) => 300 + ((i * 7919) % N);
    const first: string[] = [];
    for (let i = 0; i < N; i++) first.push(lease(store, mac(1, i), seconds(i))!);
    expect(first).toEqual(order.slice(0, N)); // distinct, lowest never-leased first, nothing excluded
    // A scan of the pool per MAC would examine ~N^2/2 = 12.5 M addresses.
    expect(store.examined).toBeLessThanOrEqual(3 * N + pool.excluded.size);

    // Reserved machines get their reservation, whatever the pool holds.
    for (const [m, ip] of RESERVED) expect(lease(store, m, 600)).toBe(ip);

    // Offers that were never taken run out and free their addresses again.
    const unanswered = Array.from({ length: 10 }, (_, i) => store.offer(mac(2, i), XID, pool, undefined, undefined, limit).ip);
    expect(unanswered).toEqual(order.slice(N, N + 10));
    clock += 60_001;
    expect(store.offer(mac(3, 0), XID, pool, undefined, undefined, limit).ip).toBe(order[N]);
    store.withdrawOffer(mac(3, 0));

    // Unknown MACs: at most the cap, even with thousands of addresses free. Counting what they
    // hold walks every lease: done once for the flood, not once per DISCOVER (200 x 5000).
    let asked = 0;
    const counting: UnknownLimit = { isKnown: (m) => (asked++, known(m)), max: limit.max };
    const unknown = Array.from({ length: 200 }, (_, i) => store.offer(`06:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`, XID, pool, undefined, undefined, counting));
    expect(asked).toBeLessThan(N + 10 * 200);
    expect(unknown.filter((o) => o.ip !== null)).toHaveLength(64);
    expect(unknown.slice(64).every((o) => o.ip === null && o.reason === 'unknown-lease-cap')).toBe(true);
    expect(store.heldByUnknown(limit)).toBe(64);
    clock += 60_001; // their offers run out

    // Everything from the first batch has expired: new MACs take the never-leased rest of
    // the pool first, then the addresses expired longest ago (ties: lowest address).
    clock += 2 * N * 1000;
    const examinedBefore = store.examined;
    const rest = USABLE - N;
    const extra = 300;
    const second: string[] = [];
    for (let i = 0; i < rest + extra; i++) second.push(lease(store, mac(4, i), 600)!);
    expect(second.slice(0, rest)).toEqual(order.slice(N));
    const byExpiry = first
      .map((ip, i) => ({ ip, at: seconds(i) }))
      .sort((a, b) => a.at - b.at || ipToInt(a.ip) - ipToInt(b.ip))
      .map((e) => e.ip);
    expect(second.slice(rest)).toEqual(byExpiry.slice(0, extra));
    expect(store.examined - examinedBefore).toBeLessThanOrEqual(4 * (rest + extra) + 64 + 10);
    expect(new Set(second).size).toBe(second.length);
    for (const ip of second) expect(pool.excluded.has(ip)).toBe(false);

    // A MAC of the first batch whose address nobody took gets it back; one whose address went
    // to another MAC gets the next one expired longest ago.
    const keptIndex = first.indexOf(byExpiry[N - 1]!);
    expect(store.offer(mac(1, keptIndex), XID, pool, undefined, undefined, limit).ip).toBe(first[keptIndex]);
    const lostIndex = first.indexOf(byExpiry[0]!);
    expect(store.offer(mac(1, lostIndex), XID, pool, undefined, undefined, limit).ip).toBe(byExpiry[extra]);

    // The state survives a restart: the allocator picks up where it was, from the records.
    await store.flush();
    const again = await LeaseStore.open(file, { now });
    expect(again.list()).toHaveLength(store.list().length);
    expect(lease(again, mac(5, 0), 600)).toBe(byExpiry[extra]);

    // A declined address is kept out until its hold ends, then it is free again (no record).
    const declined = again.active(mac(4, 0))!.ip;
    expect(again.decline(mac(4, 0), declined, 600)).toBe(true);
    const used = new Set(again.list().filter((l) => l.expiresAt > clock).map((l) => l.ip));
    for (let i = 1; i <= 3; i++) {
      const ip = again.offer(mac(6, i), XID, pool, undefined, undefined, limit).ip;
      expect(ip).not.toBe(declined);
      expect(used.has(ip!)).toBe(false);
    }
    clock += 600_001;
    expect(again.offer(mac(6, 9), XID, pool, undefined, undefined, limit).ip).toBe(declined);
  });

  it('fills the pool exactly: every usable address once, then pool-exhausted; a reservation still works', async () => {
    const store = await LeaseStore.open(null, { now });
    const given = new Set<string>();
    for (let i = 0; i < USABLE; i++) {
      const ip = lease(store, mac(7, i), 3600);
      expect(ip).not.toBeNull();
      given.add(ip!);
    }
    expect(given.size).toBe(USABLE);
    for (const ip of pool.excluded) expect(given.has(ip)).toBe(false);
    expect(store.offer(mac(8, 0), XID, pool, undefined, undefined, limit)).toEqual({ ip: null, reason: 'pool-exhausted' });
    const [reservedMac, reservedIp] = [...RESERVED][0]!;
    expect(store.offer(reservedMac, XID, pool, reservedIp, undefined, limit).ip).toBe(reservedIp);
    expect(store.examined).toBeLessThanOrEqual(3 * USABLE + pool.excluded.size + 10);
  });
});
