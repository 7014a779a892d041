import type { Config } from '../config/types.ts';
import type { DhcpSightings } from './dhcp-sightings.ts';
import type { NeighbourLookup } from './neighbours.ts';

/**
 * Is the peer of a request the machine whose MAC it names? A MAC in a URL is a claim; the
 * evidence is what the server itself saw:
 * - full DHCP: the peer address is the one leased to that MAC, and the kernel's neighbour entry
 *   for it, if it has one (none: the peer is behind a relay or router), is that MAC;
 * - proxy DHCP: the kernel's neighbour entry for the peer address is that MAC, and our DHCP
 *   server saw a packet from that MAC within the boot window;
 * - DHCP off: the neighbour entry alone.
 * `server.identity.check: off` trusts the URL (a private lab, or machines behind a relay in proxy mode).
 */

export type IdentityVerdict = { ok: true; evidence: string } | { ok: false; reason: string; peerMac?: string };

export interface IdentityEvidence {
  getConfig: () => Config;
  neighbours: NeighbourLookup;
  sightings: DhcpSightings;
  /** Full mode: the address currently leased to a MAC. */
  leaseOf?: (mac: string) => string | undefined;
}

export function peerAddress(ip: string): string {
  return ip.replace(/^::ffff:/, '');
}

export async function verifyIdentity(evidence: IdentityEvidence, mac: string, peerIp: string): Promise<IdentityVerdict> {
  const config = evidence.getConfig();
  const { check, bootWindowSeconds } = config.server.identity;
  if (check === 'off') return { ok: true, evidence: 'server.identity.check is off' };
  const peer = peerAddress(peerIp);
  const mode = config.server.dhcp.mode;

  if (mode === 'full') {
    const leased = evidence.leaseOf?.(mac);
    const neighbour = await evidence.neighbours(peer);
    if (leased !== peer) return { ok: false, reason: `request from ${peer}, but ${mac} ${leased ? `holds the lease ${leased}` : 'holds no lease'}`, peerMac: neighbour };
    // A lease alone is not enough: anyone can put M's address on their own NIC once M is off
    // the segment, or forge DHCP with M's chaddr to have an address bound to M. On the
    // segment the kernel knows the peer's real MAC; no entry: a relay or router in between.
    if (neighbour !== undefined && neighbour !== mac) return { ok: false, reason: `request from ${peer}, leased to ${mac}, but its MAC is ${neighbour}`, peerMac: neighbour };
    return { ok: true, evidence: neighbour ? `lease ${leased}, neighbour ${neighbour}` : `lease ${leased} (no neighbour entry: relayed)` };
  }

  const neighbour = await evidence.neighbours(peer);
  if (neighbour === undefined) return { ok: false, reason: `no neighbour entry for ${peer}: not on this server's segment (a relay or NAT in between?)` };
  if (neighbour !== mac) return { ok: false, reason: `request from ${peer}, whose MAC is ${neighbour}`, peerMac: neighbour };
  if (mode === 'off') return { ok: true, evidence: `neighbour ${peer} is ${neighbour}` };
  const age = evidence.sightings.ageMs(mac);
  if (age === undefined || age > bootWindowSeconds * 1000) {
    return { ok: false, reason: `${mac} sent no DHCP packet in the last ${bootWindowSeconds} s (it did not boot from the network just now)`, peerMac: neighbour };
  }
  return { ok: true, evidence: `neighbour ${peer} is ${neighbour}, DHCP ${Math.round(age / 1000)} s ago` };
}
