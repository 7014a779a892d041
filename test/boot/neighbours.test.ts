import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { arpEntry, kernelNeighbours, parseArpTable } from '../../server/boot/neighbours.ts';

const TABLE = [
  'IP address       HW type     Flags       HW address            Mask     Device',
  '10.88.21.1       0x1         0x2         52:54:00:88:00:01     *        br0',
  '10.88.21.10      0x1         0x6         52:54:00:88:00:0A     *        br0',
  '10.88.21.100     0x1         0x0         00:00:00:00:00:00     *        br0',
  '10.88.21.11      0x1         0x2         52:54:00:88:00:0b     *        br0',
].join('\n');

describe('neighbour lookup', () => {
  const dir = mkdtempSync(join(tmpdir(), 'st-arp-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('arpEntry finds exactly the entry parseArpTable has for an address (no prefix matches, incomplete entries skipped)', () => {
    const table = parseArpTable(TABLE);
    for (const ip of ['10.88.21.1', '10.88.21.10', '10.88.21.100', '10.88.21.11', '10.88.21.2', '10.88.2', '']) {
      expect(arpEntry(TABLE, ip)).toBe(table.get(ip));
    }
    expect(arpEntry(TABLE, '10.88.21.10')).toBe('52:54:00:88:00:0a');
    expect(arpEntry(TABLE, '10.88.21.100')).toBeUndefined();
    expect(arpEntry(`${TABLE}\n`, '10.88.21.11')).toBe('52:54:00:88:00:0b');
  });

  it('lookups made in one turn share a read; a lookup in a later turn sees a change', async () => {
    const path = join(dir, 'arp');
    writeFileSync(path, TABLE);
    const lookup = kernelNeighbours(path);
    const [a, b] = await Promise.all([lookup('10.88.21.1'), lookup('10.88.21.11')]);
    expect([a, b]).toEqual(['52:54:00:88:00:01', '52:54:00:88:00:0b']);
    writeFileSync(path, TABLE.replace('52:54:00:88:00:01', 'ae:ef:52:fa:15:90'));
    expect(await lookup('10.88.21.1')).toBe('52:54:00:88:00:01'); // the same turn: the shared read
    await new Promise((resolve) => setImmediate(resolve));
    expect(await lookup('10.88.21.1')).toBe('ae:ef:52:fa:15:90');
    expect(await kernelNeighbours(join(dir, 'absent'))('10.88.21.1')).toBeUndefined();
  });
});
