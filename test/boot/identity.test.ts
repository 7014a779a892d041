import { describe, expect, it } from 'vitest';
import { DhcpSightings } from '../../server/boot/dhcp-sightings.ts';
import { verifyIdentity, type IdentityEvidence } from '../../server/boot/identity.ts';
import { parseConfig } from '../../server/config/load.ts';

/**
 * The identity verdict as a pure function of what the server saw: lease table, kernel
 * neighbour table, DHCP sightings. The lab tests (identity-lab, second-host-probe) run the same
 * rules with real packets; these pin each rule and its failure on its own.
 */
const M = '52:54:00:13:00:01';
const ATTACKER = '52:54:00:13:00:66';

function evidence(mode: 'proxy' | 'full' | 'off', world: { arp?: Record<string, string>; leases?: Record<string, string>; dhcpAgoMs?: number; check?: 'evidence' | 'off' }): IdentityEvidence {
  const dhcp = mode === 'full' ? `{ mode: full, pool: { start: 10.88.71.50, end: 10.88.71.60 } }` : `{ mode: ${mode} }`;
  const config = parseConfig(
    `server:\n  address: 10.88.71.1\n  dhcp: ${dhcp}\n  identity: { check: ${world.check ?? 'evidence'}, bootWindowSeconds: 60 }\nimages:\n  demo: { source: 'docker:demo' }\nmachines:\n  ${M}: {}\n`,
    '/x/netboot.yaml',
  );
  let now = 1_000_000;
  const sightings = new DhcpSightings(16, () => now);
  if (world.dhcpAgoMs !== undefined) {
    now -= world.dhcpAgoMs;
    sightings.note(M);
    now += world.dhcpAgoMs;
  }
  return {
    getConfig: () => config,
    neighbours: async (ip) => world.arp?.[ip],
    sightings,
    leaseOf: (mac) => world.leases?.[mac],
  };
}

describe('verifyIdentity: full DHCP', () => {
  it('the address leased to the MAC, with that MAC in the neighbour table: ok', async () => {
    const ev = evidence('full', { leases: { [M]: '10.88.71.50' }, arp: { '10.88.71.50': M } });
    expect(await verifyIdentity(ev, M, '::ffff:10.88.71.50')).toMatchObject({ ok: true });
  });

  it('another address than the lease, or no lease: refused, naming the peer MAC', async () => {
    const ev = evidence('full', { leases: { [M]: '10.88.71.50' }, arp: { '10.88.71.99': ATTACKER } });
    expect(await verifyIdentity(ev, M, '10.88.71.99')).toEqual({ ok: false, reason: expect.stringContaining('holds the lease 10.88.71.50'), peerMac: ATTACKER });
    const none = evidence('full', { arp: { '10.88.71.99': ATTACKER } });
    expect(await verifyIdentity(none, M, '10.88.71.99')).toMatchObject({ ok: false, reason: expect.stringContaining('holds no lease') });
  });

  it("the leased address on another host's NIC (M went offline, or a forged DHCP exchange bound it to M): refused", async () => {
    const ev = evidence('full', { leases: { [M]: '10.88.71.50' }, arp: { '10.88.71.50': ATTACKER } });
    expect(await verifyIdentity(ev, M, '10.88.71.50')).toEqual({ ok: false, reason: expect.stringContaining(`its MAC is ${ATTACKER}`), peerMac: ATTACKER });
  });

  it('no neighbour entry (a relay or router in between): the lease decides', async () => {
    const ev = evidence('full', { leases: { [M]: '10.88.71.50' } });
    expect(await verifyIdentity(ev, M, '10.88.71.50')).toMatchObject({ ok: true, evidence: expect.stringContaining('relayed') });
  });
});

describe('verifyIdentity: proxy DHCP', () => {
  it('neighbour entry is the MAC and its DHCP packet is within the boot window: ok', async () => {
    const ev = evidence('proxy', { arp: { '10.88.71.120': M }, dhcpAgoMs: 59_000 });
    expect(await verifyIdentity(ev, M, '10.88.71.120')).toMatchObject({ ok: true });
  });

  it('another MAC behind the address, no entry, or no recent DHCP: refused', async () => {
    expect(await verifyIdentity(evidence('proxy', { arp: { '10.88.71.120': ATTACKER }, dhcpAgoMs: 0 }), M, '10.88.71.120')).toMatchObject({ ok: false, peerMac: ATTACKER });
    expect(await verifyIdentity(evidence('proxy', { dhcpAgoMs: 0 }), M, '10.88.71.120')).toMatchObject({ ok: false, reason: expect.stringContaining('no neighbour entry') });
    expect(await verifyIdentity(evidence('proxy', { arp: { '10.88.71.120': M }, dhcpAgoMs: 61_000 }), M, '10.88.71.120')).toMatchObject({ ok: false, reason: expect.stringContaining('no DHCP packet') });
    expect(await verifyIdentity(evidence('proxy', { arp: { '10.88.71.120': M } }), M, '10.88.71.120')).toMatchObject({ ok: false });
  });
});

describe('verifyIdentity: DHCP off, check off', () => {
  it('DHCP off: the neighbour entry alone', async () => {
    expect(await verifyIdentity(evidence('off', { arp: { '10.88.71.120': M } }), M, '10.88.71.120')).toMatchObject({ ok: true });
    expect(await verifyIdentity(evidence('off', { arp: { '10.88.71.120': ATTACKER } }), M, '10.88.71.120')).toMatchObject({ ok: false });
  });

  it('identity.check off trusts the URL', async () => {
    expect(await verifyIdentity(evidence('full', { check: 'off' }), M, '10.88.71.99')).toMatchObject({ ok: true });
  });
});

describe('DHCP sightings under a flood of made-up MACs', () => {
  it("10,000 forged chaddrs evict only unknown MACs: the configured machine's sighting (its proxy-mode evidence) stays", async () => {
    let now = 1_000_000;
    const configured = new Set([M]);
    const sightings = new DhcpSightings(64, () => now, (mac) => configured.has(mac));
    sightings.note(M, { arch: 7 });
    sightings.note('02:00:00:00:00:01');
    for (let i = 0; i < 10_000; i++) sightings.note(`02:13:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`);
    now += 5_000;
    expect(sightings.ageMs(M)).toBe(5_000);
    expect(sightings.info(M)).toEqual({ arch: 7 });
    // The unknown part keeps its own bound, least recently seen forgotten first.
    expect(sightings.ageMs('02:00:00:00:00:01')).toBeUndefined();
    expect(sightings.ageMs('02:13:00:00:27:0f')).toBe(5_000);
    expect(sightings.ageMs('02:13:00:00:00:00')).toBeUndefined();

    const ev = evidence('proxy', { arp: { '10.88.71.120': M } });
    const withSightings: IdentityEvidence = { ...ev, sightings };
    expect(await verifyIdentity(withSightings, M, '10.88.71.120')).toMatchObject({ ok: true });
  });
});
