import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LeaseStore, unknownLeaseCap, type PoolSpec, type UnknownLimit } from '../../server/dhcp/leases.ts';

const pool: PoolSpec = { start: '10.1.0.10', end: '10.1.0.12', excluded: new Set(['10.1.0.11']) };
const XID = 0x1234;

describe('lease store', () => {
  let dir: string;
  let clock = 5_000_000;
  const now = () => clock;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-leases-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('persists bound leases atomically and reads them back after a restart', async () => {
    const file = join(dir, 'state', 'leases.json');
    const first = await LeaseStore.open(file, { now });
    expect(first.offer('02:00:00:00:00:01', XID, pool, undefined, undefined)).toEqual({ ip: '10.1.0.10' });
    expect(first.bind('02:00:00:00:00:01', '10.1.0.10', 3600, pool, undefined)).toBe(true);
    await first.flush();
    expect(await readdir(join(dir, 'state'))).toEqual(['leases.json']); // no temp file left
    const onDisk = JSON.parse(await readFile(file, 'utf8'));
    expect(onDisk.leases).toEqual([{ mac: '02:00:00:00:00:01', ip: '10.1.0.10', expiresAt: clock + 3_600_000, state: 'bound' }]);

    const second = await LeaseStore.open(file, { now });
    expect(second.active('02:00:00:00:00:01')?.ip).toBe('10.1.0.10');
    // Another client does not get the address; the owner gets it again.
    expect(second.offer('02:00:00:00:00:02', XID, pool, undefined, '10.1.0.10')).toEqual({ ip: '10.1.0.12' });
    expect(second.offer('02:00:00:00:00:01', XID, pool, undefined, undefined)).toEqual({ ip: '10.1.0.10' });
  });

  it('a failed write is reported by flush(); the next change writes everything again', async () => {
    const stateDir = join(dir, 'state');
    const file = join(stateDir, 'leases.json');
    const store = await LeaseStore.open(file, { now });
    store.bind('02:00:00:00:00:01', '10.1.0.10', 60, pool, undefined);
    await store.flush();
    // The state directory is replaced by a plain file: nothing can be written under it.
    await rm(stateDir, { recursive: true });
    await writeFile(stateDir, '');
    store.bind('02:00:00:00:00:02', '10.1.0.12', 60, pool, undefined);
    await expect(store.flush()).rejects.toThrow();
    await rm(stateDir);
    store.release('02:00:00:00:00:02', '10.1.0.12');
    await store.flush();
    expect(JSON.parse(await readFile(file, 'utf8')).leases).toHaveLength(2);
    expect(await readdir(stateDir)).toEqual(['leases.json']);
  });

  it('many changes in a burst end up on disk as the last state (writes are coalesced)', async () => {
    const file = join(dir, 'leases.json');
    const store = await LeaseStore.open(file, { now });
    for (let i = 0; i < 200; i++) store.bind('02:00:00:00:00:01', i % 2 ? '10.1.0.10' : '10.1.0.12', 60 + i, pool, undefined);
    await store.flush();
    expect(JSON.parse(await readFile(file, 'utf8')).leases).toEqual([{ mac: '02:00:00:00:00:01', ip: '10.1.0.10', expiresAt: clock + 259_000, state: 'bound' }]);
  });

  it('expired leases free their address, preferring never-used ones first', async () => {
    const store = await LeaseStore.open(null, { now });
    store.bind('02:00:00:00:00:01', '10.1.0.10', 60, pool, undefined);
    store.bind('02:00:00:00:00:02', '10.1.0.12', 60, pool, undefined);
    expect(store.offer('02:00:00:00:00:03', XID, pool, undefined, undefined)).toEqual({ ip: null, reason: 'pool-exhausted' });
    clock += 61_000;
    expect(store.active('02:00:00:00:00:01')).toBeUndefined();
    expect(store.offer('02:00:00:00:00:03', XID, pool, undefined, undefined)).toEqual({ ip: '10.1.0.10' });
    // The previous holder comes back: its old address is offered to another, it gets the other expired one.
    expect(store.offer('02:00:00:00:00:01', XID, pool, undefined, undefined)).toEqual({ ip: '10.1.0.12' });
  });

  it('a reservation outside the pool is honoured, and never given to anyone else', async () => {
    const store = await LeaseStore.open(null, { now });
    expect(store.offer('02:00:00:00:00:05', XID, pool, '10.1.0.200', undefined)).toEqual({ ip: '10.1.0.200' });
    expect(store.bind('02:00:00:00:00:05', '10.1.0.10', 60, pool, '10.1.0.200')).toBe(false);
    expect(store.bind('02:00:00:00:00:06', '10.1.0.11', 60, pool, undefined)).toBe(false); // excluded
  });

  it('starts empty, with a warning, from a corrupt file', async () => {
    const file = join(dir, 'leases.json');
    await writeFile(file, '{"version":1,"leases":[{"mac":');
    const warnings: string[] = [];
    const store = await LeaseStore.open(file, { now, warn: (m) => warnings.push(m) });
    expect(store.list()).toEqual([]);
    expect(warnings[0]).toMatch(/not valid lease JSON/);
  });

  it('declined addresses are persisted too, with who declined them', async () => {
    const file = join(dir, 'leases.json');
    const store = await LeaseStore.open(file, { now });
    store.bind('02:00:00:00:00:07', '10.1.0.10', 60, pool, undefined);
    expect(store.decline('02:00:00:00:00:07', '10.1.0.10', 600)).toBe(true);
    // Only the MAC's own address can be declined.
    expect(store.decline('02:00:00:00:00:08', '10.1.0.12', 600)).toBe(false);
    await store.flush();
    const again = await LeaseStore.open(file, { now });
    expect(again.isDeclined('10.1.0.10')).toBe(true);
    expect(again.heldByUnknown({ isKnown: () => false })).toBe(1);
    expect(again.offer('02:00:00:00:00:07', XID, pool, undefined, '10.1.0.10')).toEqual({ ip: '10.1.0.12' });
  });

  it('an offer is not a lease: it is held for the MAC and transaction it was made in, never persisted', async () => {
    const file = join(dir, 'leases.json');
    const store = await LeaseStore.open(file, { now });
    const mac = '02:00:00:00:00:09';
    expect(store.offer(mac, 0xaaaa, pool, undefined, undefined)).toEqual({ ip: '10.1.0.10' });
    expect(store.active(mac)).toBeUndefined();
    expect(store.holder('10.1.0.10')).toBe(mac);
    expect(store.matchOffer(mac, '10.1.0.10', 0xaaaa)).toEqual({ ok: true });
    expect(store.matchOffer(mac, '10.1.0.10', 0xbbbb)).toMatchObject({ ok: false, why: 'other-xid' });
    expect(store.matchOffer(mac, '10.1.0.12', 0xaaaa)).toMatchObject({ ok: false, why: 'other-address', offered: '10.1.0.10' });
    expect(store.matchOffer('02:00:00:00:00:0a', '10.1.0.10', 0xaaaa)).toMatchObject({ ok: false, why: 'no-offer' });
    // A retransmitted DISCOVER with a new xid: both transactions match the same offer.
    expect(store.offer(mac, 0xbbbb, pool, undefined, undefined)).toEqual({ ip: '10.1.0.10' });
    expect(store.matchOffer(mac, '10.1.0.10', 0xaaaa)).toEqual({ ok: true });
    expect(store.matchOffer(mac, '10.1.0.10', 0xbbbb)).toEqual({ ok: true });
    // Withdrawn only for its own transaction.
    store.withdrawOffer(mac, 0xcccc);
    expect(store.offerTo(mac)).toMatchObject({ ip: '10.1.0.10' });
    store.withdrawOffer(mac, 0xbbbb);
    expect(store.offerTo(mac)).toBeUndefined();
    // Offers run out after a minute.
    store.offer(mac, 0xaaaa, pool, undefined, undefined);
    clock += 60_001;
    expect(store.matchOffer(mac, '10.1.0.10', 0xaaaa)).toMatchObject({ ok: false, why: 'no-offer' });
    await store.flush();
    await expect(readFile(file)).rejects.toThrow(/ENOENT/);
  });

  it('unknown MACs hold at most the cap (offers, leases and declines together); known MACs are not limited', async () => {
    const big: PoolSpec = { start: '10.2.0.1', end: '10.2.0.254', excluded: new Set() };
    const known = new Set(['52:54:00:00:00:01']);
    const limit: UnknownLimit = { isKnown: (mac) => known.has(mac), max: 3 };
    const store = await LeaseStore.open(null, { now });
    const mac = (i: number) => `02:00:00:00:01:${i.toString(16).padStart(2, '0')}`;
    expect(store.offer(mac(1), XID, big, undefined, undefined, limit).ip).toBe('10.2.0.1');
    store.bind(mac(1), '10.2.0.1', 300, big, undefined);
    expect(store.offer(mac(2), XID, big, undefined, undefined, limit).ip).toBe('10.2.0.2');
    expect(store.decline(mac(2), '10.2.0.2', 600)).toBe(true);
    expect(store.offer(mac(3), XID, big, undefined, undefined, limit).ip).toBe('10.2.0.3');
    expect(store.heldByUnknown(limit)).toBe(3);
    for (let i = 4; i < 200; i++) expect(store.offer(mac(i), XID, big, undefined, undefined, limit)).toEqual({ ip: null, reason: 'unknown-lease-cap' });
    expect(store.offers()).toHaveLength(1);
    // A holder may ask again (same address), a known MAC is not counted.
    expect(store.offer(mac(1), XID, big, undefined, undefined, limit).ip).toBe('10.2.0.1');
    expect(store.offer('52:54:00:00:00:01', XID, big, undefined, undefined, limit).ip).toBe('10.2.0.4');
    // The count is reused for a second: an address given up is still counted until then (the cap errs on refusing).
    expect(store.release(mac(1), '10.2.0.1')).toBe(true);
    expect(store.offer(mac(200), XID, big, undefined, undefined, limit)).toEqual({ ip: null, reason: 'unknown-lease-cap' });
    clock += 1000;
    expect(store.offer(mac(200), XID, big, undefined, undefined, limit).ip).not.toBeNull();
    expect(store.heldByUnknown(limit)).toBe(3);
    expect(store.offer(mac(201), XID, big, undefined, undefined, limit)).toEqual({ ip: null, reason: 'unknown-lease-cap' });
    // When offers run out, room again.
    clock += 60_001;
    expect(store.offer(mac(9), XID, big, undefined, undefined, limit).ip).toBe('10.2.0.3');
    expect(unknownLeaseCap({ start: '10.0.0.1', end: '10.0.0.4' })).toBe(2);
    expect(unknownLeaseCap({ start: '10.0.0.0', end: '10.0.255.255' })).toBe(256);
    expect(unknownLeaseCap({ start: '10.0.0.1', end: '10.0.0.1' })).toBe(1);
    expect(unknownLeaseCap({ start: '10.0.0.1', end: '10.0.0.4', maxUnknownLeases: 0 })).toBe(0);
  });

  it('a known MAC finding the pool full of offers to unknown MACs takes back the oldest one', async () => {
    const limit: UnknownLimit = { isKnown: (mac) => mac === '52:54:00:00:00:01', max: 10 };
    const store = await LeaseStore.open(null, { now });
    expect(store.offer('02:00:00:00:02:01', XID, pool, undefined, undefined, limit).ip).toBe('10.1.0.10');
    clock += 1000;
    expect(store.offer('02:00:00:00:02:02', XID, pool, undefined, undefined, limit).ip).toBe('10.1.0.12');
    expect(store.offer('52:54:00:00:00:01', XID, pool, undefined, undefined, limit).ip).toBe('10.1.0.10');
    expect(store.offerTo('02:00:00:00:02:01')).toBeUndefined();
    // Bound leases of unknown MACs are not taken back.
    store.bind('02:00:00:00:02:02', '10.1.0.12', 300, pool, undefined);
    expect(store.offer('52:54:00:00:00:02', XID, pool, undefined, undefined, { ...limit, isKnown: () => true })).toEqual({ ip: null, reason: 'pool-exhausted' });
  });
});
