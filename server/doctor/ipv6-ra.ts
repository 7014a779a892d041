import type { Finding } from './finding.ts';

/**
 * Router advertisements. iPXE waits for IPv6 autoconfiguration before it boots; without an RA
 * on the segment that wait runs out after ~16 s (measured: 27.6 s to userspace without an RA,
 * 11.1 s with one).
 *
 * doctor asks actively with rdisc6 (Debian package ndisc6): it sends one Router Solicitation and
 * prints the advertisements, independent of this host's own accept_ra/forwarding settings (a
 * Docker host forwards, so its kernel ignores RAs and a passive look at its routes would say
 * "none" on a segment that has them). Node has no raw ICMPv6 sockets; rdisc6 is setuid and tiny.
 * Without rdisc6, doctor falls back to the kernel's view: a default route learnt from an RA.
 */

export interface Advertisement {
  from: string;
  lifetimeSeconds: number | null;
  prefixes: string[];
}

export function parseRdisc6(stdout: string): Advertisement[] {
  const out: Advertisement[] = [];
  let current: { lifetimeSeconds: number | null; prefixes: string[] } = { lifetimeSeconds: null, prefixes: [] };
  for (const line of stdout.split('\n')) {
    const lifetime = /^\s*Router lifetime\s*:\s*(\d+)/.exec(line);
    if (lifetime) current.lifetimeSeconds = Number(lifetime[1]);
    const prefix = /^\s*Prefix\s*:\s*(\S+)/.exec(line);
    if (prefix) current.prefixes.push(prefix[1]!);
    const from = /^\s*from\s+(\S+)/.exec(line);
    if (from) {
      out.push({ from: from[1]!, ...current });
      current = { lifetimeSeconds: null, prefixes: [] };
    }
  }
  return out;
}

export type RaObservation =
  | { method: 'rdisc6'; advertisements: Advertisement[]; error?: string }
  | { method: 'routes'; raRoute: boolean }
  | { method: 'none'; reason: string };

/** server.ipv6RouterAdvert as configured, if the config knows the setting. */
export type RaSetting = 'auto' | 'off' | undefined;

const WHY = 'iPXE then waits ~16 s for IPv6 autoconfiguration on every boot (27.6 s to userspace without an RA vs 11.1 s with one)';
const FIX =
  'set server.ipv6RouterAdvert: auto (netboot answers Router Solicitations itself), or have the lab router advertise (radvd, dnsmasq --enable-ra); disabling IPv6 in the iPXE build also avoids the wait';

/**
 * `setting` and `dhcpMode` are the config's: netboot answers solicitations itself
 * (server.ipv6RouterAdvert: auto) only while its own DHCP runs (mode proxy or full).
 */
export function checkRouterAdvert(observation: RaObservation, setting: RaSetting, ifname: string, dhcpMode: 'proxy' | 'full' | 'off' = 'proxy'): Finding {
  if (observation.method === 'rdisc6' && observation.advertisements.length) {
    const ads = observation.advertisements.map((a) => `${a.from} (router lifetime ${a.lifetimeSeconds ?? '?'} s${a.prefixes.length ? `, prefix ${a.prefixes.join(', ')}` : ''})`);
    return { check: 'ipv6-ra', severity: 'ok', summary: `router advertisement on ${ifname}: iPXE does not wait for IPv6`, details: ads };
  }
  if (observation.method === 'routes' && observation.raRoute) {
    return { check: 'ipv6-ra', severity: 'ok', summary: `this host has a route learnt from a router advertisement on ${ifname}` };
  }
  if (setting === 'auto' && dhcpMode !== 'off') {
    return { check: 'ipv6-ra', severity: 'ok', summary: `no router advertises on ${ifname}; handled: server.ipv6RouterAdvert is auto, so netboot serve answers the Router Solicitations of booting machines itself` };
  }
  const fix =
    setting === 'auto'
      ? 'netboot answers Router Solicitations (server.ipv6RouterAdvert: auto) only while its DHCP runs: set server.dhcp.mode proxy or full, or have the lab router advertise (radvd, dnsmasq --enable-ra)'
      : FIX;
  if (observation.method === 'rdisc6' && observation.error) {
    return { check: 'ipv6-ra', severity: 'info', summary: `could not solicit a router advertisement on ${ifname}: ${observation.error}`, fix: `if no router advertises there, ${WHY}: ${fix}` };
  }
  if (observation.method === 'none') {
    return { check: 'ipv6-ra', severity: 'info', summary: `router advertisements not checked: ${observation.reason}`, fix: 'install ndisc6 (rdisc6) and run doctor again' };
  }
  const how = observation.method === 'rdisc6' ? 'no router answered a Router Solicitation' : 'this host has learnt no route from a router advertisement (install ndisc6 for an active check)';
  return { check: 'ipv6-ra', severity: 'warn', summary: `no IPv6 router advertisement on ${ifname} (${how}): ${WHY}`, fix };
}
