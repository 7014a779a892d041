import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { arpEntry, interfacesFor, kernelNeighbours, parseArpTable } from '../../server/boot/neighbours.ts';
import { REPO_ROOT } from '../../server/cli/common.ts';

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

  it('lookups made in one turn share a read; a lookup after a change sees it', async () => {
    const path = join(dir, 'arp');
    writeFileSync(path, TABLE);
    const lookup = kernelNeighbours(path);
    const [a, b] = await Promise.all([lookup('10.88.21.1'), lookup('10.88.21.11')]);
    expect([a, b]).toEqual(['52:54:00:88:00:01', '52:54:00:88:00:0b']);
    writeFileSync(path, TABLE.replace('52:54:00:88:00:01', 'ae:ef:52:fa:15:90'));
    expect(await lookup('10.88.21.1')).toBe('ae:ef:52:fa:15:90');
    expect(await kernelNeighbours(join(dir, 'absent'))('10.88.21.1')).toBeUndefined();
  });
});

describe('interfacesFor', () => {
  it('lists IPv4 interfaces but loopback, the ones whose subnet holds the address first', () => {
    const v4 = (address: string, netmask: string, internal = false) => ({ address, netmask, family: 'IPv4' as const, internal, mac: '00:00:00:00:00:00', cidr: null });
    const interfaces = {
      lo: [v4('127.0.0.1', '255.0.0.0', true)],
      eth0: [v4('192.168.1.5', '255.255.255.0')],
      br0: [v4('10.88.21.1', '255.255.252.0')],
      v6only: [{ address: 'fe80::1', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6' as const, internal: false, mac: '00:00:00:00:00:00', cidr: null, scopeid: 1 }],
    };
    expect(interfacesFor('10.88.23.200', interfaces)).toEqual(['br0', 'eth0']);
    expect(interfacesFor('192.168.1.77', interfaces)).toEqual(['eth0', 'br0']);
    expect(interfacesFor('172.16.0.1', interfaces)).toEqual(['eth0', 'br0']);
  });
});

describe.skipIf(process.getuid?.() !== 0 || !existsSync(join(REPO_ROOT, 'build/Release/netboot_neigh.node')))('neighbour lookup over rtnetlink (netboot_neigh)', () => {
  const ns = `nb-neigh-${process.pid}`;
  afterAll(() => execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }));

  it('gives what /proc/net/arp gives for every address, on two interfaces: permanent, stale and failed entries, and none', () => {
    execFileSync('ip', ['netns', 'add', ns]);
    const ip = (...args: string[]) => execFileSync('ip', ['-n', ns, ...args]);
    for (const [a, b, net] of [['va0', 'vb0', '10.88.90.1/24'], ['va1', 'vb1', '10.88.91.1/24']] as const) {
      ip('link', 'add', a, 'type', 'veth', 'peer', 'name', b);
      ip('link', 'set', a, 'up');
      ip('link', 'set', b, 'up');
      ip('addr', 'add', net, 'dev', a);
    }
    ip('neigh', 'add', '10.88.90.10', 'lladdr', '52:54:00:88:90:0A', 'nud', 'permanent', 'dev', 'va0');
    ip('neigh', 'add', '10.88.90.11', 'lladdr', '52:54:00:88:90:0b', 'nud', 'stale', 'dev', 'va0');
    ip('neigh', 'add', '10.88.91.12', 'lladdr', '52:54:00:88:91:0c', 'nud', 'reachable', 'dev', 'va1');
    // The same address on the other interface too: the one on its own subnet's interface wins.
    ip('neigh', 'add', '10.88.91.13', 'lladdr', '52:54:00:88:91:0d', 'nud', 'permanent', 'dev', 'va1');
    ip('neigh', 'add', '10.88.91.13', 'lladdr', '52:54:00:66:66:66', 'nud', 'permanent', 'dev', 'va0');
    ip('neigh', 'add', '10.88.90.14', 'nud', 'failed', 'dev', 'va0');
    const out = JSON.parse(
      execFileSync('ip', ['netns', 'exec', ns, 'node', '--import', 'tsx', join(REPO_ROOT, 'test/boot/neighbours-child.ts'), '10.88.90.99', '10.88.92.1', '10.88.90.1'], {
        cwd: REPO_ROOT,
        encoding: 'utf8',
      }),
    ) as Record<string, { netlink: string | null; proc: string | null; table: string | null }>;
    expect(out['10.88.90.10']).toEqual({ netlink: '52:54:00:88:90:0a', proc: '52:54:00:88:90:0a', table: '52:54:00:88:90:0a' });
    expect(out['10.88.90.11']?.netlink).toBe('52:54:00:88:90:0b');
    expect(out['10.88.91.12']?.netlink).toBe('52:54:00:88:91:0c');
    expect(out['10.88.91.13']?.netlink).toBe('52:54:00:88:91:0d');
    for (const absent of ['10.88.90.14', '10.88.90.99', '10.88.92.1', '10.88.90.1']) expect(out[absent]).toEqual({ netlink: null, proc: null, table: null });
    for (const [address, seen] of Object.entries(out)) {
      if (address !== '10.88.91.13') expect({ address, netlink: seen.netlink }).toEqual({ address, netlink: seen.proc });
    }
  });
});
