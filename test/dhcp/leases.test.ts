import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LeaseStore, type PoolSpec } from '../../server/dhcp/leases.ts';

const pool: PoolSpec = { start: '10.1.0.10', end: '10.1.0.12', excluded: new Set(['10.1.0.11']) };

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
    expect(first.offer('02:00:00:00:00:01', pool, undefined, undefined)).toBe('10.1.0.10');
    expect(first.bind('02:00:00:00:00:01', '10.1.0.10', 3600, pool, undefined)).toBe(true);
    await first.flush();
    expect(await readdir(join(dir, 'state'))).toEqual(['leases.json']); // no temp file left
    const onDisk = JSON.parse(await readFile(file, 'utf8'));
    expect(onDisk.leases).toEqual([{ mac: '02:00:00:00:00:01', ip: '10.1.0.10', expiresAt: clock + 3_600_000, state: 'bound' }]);

    const second = await LeaseStore.open(file, { now });
    expect(second.active('02:00:00:00:00:01')?.ip).toBe('10.1.0.10');
    // Another client does not get the address; the owner gets it again.
    expect(second.offer('02:00:00:00:00:02', pool, undefined, '10.1.0.10')).toBe('10.1.0.12');
    expect(second.offer('02:00:00:00:00:01', pool, undefined, undefined)).toBe('10.1.0.10');
  });

  it('expired leases free their address, preferring never-used ones first', async () => {
    const store = await LeaseStore.open(null, { now });
    store.bind('02:00:00:00:00:01', '10.1.0.10', 60, pool, undefined);
    store.bind('02:00:00:00:00:02', '10.1.0.12', 60, pool, undefined);
    expect(store.offer('02:00:00:00:00:03', pool, undefined, undefined)).toBeNull();
    clock += 61_000;
    expect(store.active('02:00:00:00:00:01')).toBeUndefined();
    expect(store.offer('02:00:00:00:00:03', pool, undefined, undefined)).toBe('10.1.0.10');
    // The previous holder comes back: its old address is taken, it gets the other expired one.
    expect(store.offer('02:00:00:00:00:01', pool, undefined, undefined)).toBe('10.1.0.12');
  });

  it('a reservation outside the pool is honoured, and never given to anyone else', async () => {
    const store = await LeaseStore.open(null, { now });
    expect(store.offer('02:00:00:00:00:05', pool, '10.1.0.200', undefined)).toBe('10.1.0.200');
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

  it('declined addresses are persisted too', async () => {
    const file = join(dir, 'leases.json');
    const store = await LeaseStore.open(file, { now });
    store.bind('02:00:00:00:00:07', '10.1.0.10', 60, pool, undefined);
    expect(store.decline('02:00:00:00:00:07', '10.1.0.10', 600)).toBe(true);
    await store.flush();
    const again = await LeaseStore.open(file, { now });
    expect(again.isDeclined('10.1.0.10')).toBe(true);
    expect(again.offer('02:00:00:00:00:07', pool, undefined, '10.1.0.10')).toBe('10.1.0.12');
  });
});
