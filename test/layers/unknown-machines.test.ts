import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { hostKeysFor, MAX_UNKNOWN_MACHINES } from '../../server/layers/machine-state.ts';

/**
 * Issue 13, item 6: unknown MACs the policy boots keep host keys apart, bounded: the folder
 * never holds more than MAX_UNKNOWN_MACHINES machines (the least recently created go first),
 * and merely asking (create: false) writes nothing.
 */
let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

const mac = (i: number) => `02:00:00:13:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`;
const hyphens = (m: string) => m.replace(/:/g, '-');

describe('host keys of unknown MACs', () => {
  it(`asking without create writes nothing; creating beyond ${MAX_UNKNOWN_MACHINES} removes the oldest`, async () => {
    dir = await mkdtemp(join(tmpdir(), 'netboot-unknown-'));
    expect(await hostKeysFor(dir, mac(9999), { create: false, known: false })).toEqual([]);
    expect(existsSync(join(dir, 'unknown-machines'))).toBe(false);

    // A full folder, as earlier boots left it: machine i created at second i.
    const machines = join(dir, 'unknown-machines');
    for (let i = 0; i < MAX_UNKNOWN_MACHINES; i++) {
      const folder = join(machines, hyphens(mac(i)));
      await mkdir(join(folder, 'ssh'), { recursive: true });
      await utimes(folder, 1_000 + i, 1_000 + i);
    }
    const keys = await hostKeysFor(dir, mac(4096), { create: true, known: false });
    expect(keys.map((k) => k.type)).toEqual(['ed25519', 'ecdsa']);
    const left = await readdir(machines);
    expect(left).toHaveLength(MAX_UNKNOWN_MACHINES);
    expect(left).not.toContain(hyphens(mac(0)));
    expect(left).toContain(hyphens(mac(1)));
    expect(left).toContain(hyphens(mac(4096)));
    expect(existsSync(join(dir, 'machines'))).toBe(false);
  });
});
