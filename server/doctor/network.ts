import { BURST_RECEIVE_BYTES, RMEM_MAX_FIX } from '../udp-receive-buffer.ts';
import type { Finding } from './finding.ts';

/** The parts of `ip -j -d addr show` the checks read. */
export interface IpLink {
  ifname: string;
  flags?: string[];
  mtu?: number;
  operstate?: string;
  /** Present when the link's peer lives in another network namespace (a container's veth). */
  link_netnsid?: number;
  linkinfo?: { info_kind?: string };
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

export interface LocatedAddress {
  link: IpLink;
  prefixlen: number;
}

const ipv4s = (link: IpLink) => (link.addr_info ?? []).filter((a) => a.family === 'inet');

export function locateAddress(links: readonly IpLink[], address: string): LocatedAddress | null {
  for (const link of links) {
    const found = ipv4s(link).find((a) => a.local === address);
    if (found) return { link, prefixlen: found.prefixlen };
  }
  return null;
}

const CONTAINER_HINT = 'in a container: run it on the host network (docker-compose.yml: network_mode: host; docker run --network host)';

/**
 * server.address must be an address of this host, on the interface facing the machines: it is
 * in every URL and DHCP answer netboot hands out.
 */
export function checkAddress(
  links: readonly IpLink[],
  address: string,
  options: { interface?: string; inContainer?: boolean } = {},
): { finding: Finding; link: IpLink | null } {
  const candidates = links
    .filter((l) => !(l.flags ?? []).includes('LOOPBACK'))
    .flatMap((l) => ipv4s(l).map((a) => `${l.ifname} ${a.local}/${a.prefixlen}`));
  const choose = candidates.length ? `set server.address to this host's address on the boot network (here: ${candidates.join(', ')})` : 'give this host an IPv4 address on the boot network';
  if (options.interface && !links.some((l) => l.ifname === options.interface)) {
    return {
      finding: { check: 'address', severity: 'fail', summary: `no interface ${options.interface} here`, fix: `name one of: ${links.map((l) => l.ifname).join(', ')}` },
      link: null,
    };
  }
  if (address.startsWith('127.')) {
    return {
      finding: { check: 'address', severity: 'fail', summary: `server.address ${address} is a loopback address: machines cannot reach it`, fix: choose },
      link: options.interface ? (links.find((l) => l.ifname === options.interface) ?? null) : null,
    };
  }
  const located = locateAddress(links, address);
  if (!located) {
    const add = options.interface ? `, or add it: ip addr add ${address}/24 dev ${options.interface}` : '';
    return {
      finding: {
        check: 'address',
        severity: 'fail',
        summary: `server.address ${address} is on no interface of this host`,
        fix: `${choose}${add}${options.inContainer ? `; ${CONTAINER_HINT}` : ''}`,
      },
      link: options.interface ? (links.find((l) => l.ifname === options.interface) ?? null) : null,
    };
  }
  const { link, prefixlen } = located;
  if (options.interface && options.interface !== link.ifname) {
    return {
      finding: {
        check: 'address',
        severity: 'fail',
        summary: `server.address ${address} is on ${link.ifname}, not on --interface ${options.interface}`,
        fix: `run doctor with --interface ${link.ifname}, or set server.address to ${options.interface}'s address`,
      },
      link: links.find((l) => l.ifname === options.interface) ?? null,
    };
  }
  if (!(link.flags ?? []).includes('UP')) {
    return {
      finding: { check: 'address', severity: 'fail', summary: `server.address ${address} is on ${link.ifname}, which is down`, fix: `ip link set ${link.ifname} up` },
      link,
    };
  }
  if (link.operstate === 'DOWN') {
    return {
      finding: { check: 'address', severity: 'fail', summary: `server.address ${address} is on ${link.ifname}, which has no carrier`, fix: `plug ${link.ifname} into the machines' network (check the cable and switch port)` },
      link,
    };
  }
  return { finding: { check: 'address', severity: 'ok', summary: `server.address ${address} is on ${link.ifname} (${address}/${prefixlen})` }, link };
}

/** One listening socket from `ss -H -l -n -p -u -t`. */
export interface Listener {
  proto: 'udp' | 'tcp';
  address: string;
  port: number;
  processes: { name: string; pid: number }[];
}

export function parseSs(text: string): Listener[] {
  const out: Listener[] = [];
  for (const line of text.split('\n')) {
    const cols = line.trim().split(/\s+/);
    const proto = cols[0];
    if ((proto !== 'udp' && proto !== 'tcp') || cols.length < 5) continue;
    const local = cols[4]!;
    const colon = local.lastIndexOf(':');
    const port = Number(local.slice(colon + 1));
    if (colon < 0 || !Number.isInteger(port)) continue;
    // "0.0.0.0%br0", "[::]", "*" -> the bare address
    const address = local.slice(0, colon).replace(/%.*$/, '').replace(/^\[(.*)\]$/, '$1');
    const processes = [...line.matchAll(/\("([^"]*)",pid=(\d+)/g)].map((m) => ({ name: m[1]!, pid: Number(m[2]) }));
    out.push({ proto, address, port, processes });
  }
  return out;
}

/** Whether a process's argv is `netboot serve` (bin/netboot runs node on server/cli/main.ts). */
export function isNetbootServe(argv: readonly string[]): boolean {
  const isNetboot = argv.some((a) => /(^|\/)netboot$/.test(a) || /server\/cli\/main\.ts$/.test(a));
  return isNetboot && argv.includes('serve');
}

export interface PortNeed {
  proto: 'udp' | 'tcp';
  port: number;
  what: string;
  /** netboot binds it with SO_REUSEADDR, so a lab DHCP server on this host may share it (proxy mode). */
  shareable?: boolean;
}

export interface ServerPorts {
  bind: string;
  httpPort: number;
  dhcpMode: 'proxy' | 'full' | 'off';
  tftp: { enabled: boolean; port: number };
  /** null when no image has root: nbd (the NBD server is not started then). */
  nbdPort: number | null;
}

export function requiredPorts(server: ServerPorts): PortNeed[] {
  const needs: PortNeed[] = [];
  if (server.dhcpMode !== 'off') {
    needs.push({ proto: 'udp', port: 67, what: 'DHCP', shareable: server.dhcpMode === 'proxy' });
    needs.push({ proto: 'udp', port: 4011, what: 'PXE' });
  }
  if (server.tftp.enabled) needs.push({ proto: 'udp', port: server.tftp.port, what: 'TFTP' });
  needs.push({ proto: 'tcp', port: server.httpPort, what: 'HTTP' });
  if (server.nbdPort !== null) needs.push({ proto: 'tcp', port: server.nbdPort, what: 'NBD' });
  return needs;
}

const WILDCARDS = new Set(['0.0.0.0', '*', '::']);

/** Whether a socket on `listener` keeps netboot from binding `bind`:`port` (DHCP always binds 0.0.0.0). */
function collides(listener: Listener, need: PortNeed, bind: string): boolean {
  if (listener.proto !== need.proto || listener.port !== need.port) return false;
  const ours = need.what === 'DHCP' || need.what === 'PXE' ? '0.0.0.0' : bind;
  if (WILDCARDS.has(listener.address)) return true;
  if (listener.address.includes(':')) return false; // a specific IPv6 address never blocks an IPv4 bind
  return ours === '0.0.0.0' || listener.address === ours;
}

const label = (n: PortNeed) => `${n.port}/${n.proto} (${n.what})`;
const who = (l: Listener) => (l.processes.length ? l.processes.map((p) => `${p.name} pid ${p.pid}`).join(', ') : 'a process doctor cannot see (run as root to name it)');

/** Ports netboot binds: free, or held by a running `netboot serve` (ours), or taken by something else. */
export function checkPorts(needs: readonly PortNeed[], listeners: readonly Listener[], bind: string, netbootPids: ReadonlySet<number>): Finding[] {
  const findings: Finding[] = [];
  const free: string[] = [];
  const ours: string[] = [];
  for (const need of needs) {
    const holders = listeners.filter((l) => collides(l, need, bind));
    const others = holders.filter((l) => !l.processes.some((p) => netbootPids.has(p.pid)));
    if (!holders.length) free.push(label(need));
    else if (!others.length) ours.push(label(need));
    else {
      const holder = others[0]!;
      const stop = holder.processes[0] ? `stop ${holder.processes[0].name} (pid ${holder.processes[0].pid}) or its service` : 'find the holder with `ss -lnp` (as root) and stop it';
      const move =
        need.what === 'HTTP' ? ', or set server.httpPort' : need.what === 'TFTP' ? ', or set server.tftp.port (PXE firmware asks port 69)' : need.what === 'NBD' ? ', or set server.nbd.port' : '';
      findings.push(
        need.shareable
          ? {
              check: 'ports',
              severity: 'warn',
              summary: `${label(need)} is also open by ${who(holder)}`,
              fix: `netboot shares port 67 in proxy mode (SO_REUSEADDR) only if that program allows it too; if serve fails with EADDRINUSE, ${stop}`,
            }
          : { check: 'ports', severity: 'fail', summary: `${label(need)} is taken by ${who(holder)}`, fix: `${stop}${move}` },
      );
    }
  }
  if (ours.length) findings.unshift({ check: 'ports', severity: 'ok', summary: `held by a running netboot serve: ${ours.join(', ')}` });
  if (free.length) findings.unshift({ check: 'ports', severity: 'ok', summary: `free: ${free.join(', ')}` });
  return findings;
}

/**
 * Reverse-path filtering: the kernel uses max(all, <if>). Strict mode drops a packet whose source
 * would be routed out another interface: machines behind a DHCP relay, or on a subnet this host
 * reaches through its default route.
 */
export function checkRpFilter(values: { all: number | null; iface: number | null }, ifname: string, defaultRouteDev: string | null): Finding {
  const effective = Math.max(values.all ?? 0, values.iface ?? 0);
  if (values.all === null && values.iface === null) return { check: 'rp_filter', severity: 'info', summary: 'could not read net.ipv4.conf.*.rp_filter' };
  if (effective !== 1) return { check: 'rp_filter', severity: 'ok', summary: `rp_filter ${effective} (${effective === 2 ? 'loose' : 'off'}) on ${ifname}` };
  if (defaultRouteDev && defaultRouteDev !== ifname) {
    return {
      check: 'rp_filter',
      severity: 'warn',
      summary: `strict reverse-path filtering on ${ifname} while the default route leaves via ${defaultRouteDev}: packets from machines outside ${ifname}'s subnets (behind a DHCP relay) are dropped`,
      fix: `use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.${ifname}.rp_filter=2`,
    };
  }
  return { check: 'rp_filter', severity: 'ok', summary: `rp_filter 1 (strict) on ${ifname}: fine while the machines are on ${ifname}'s subnet` };
}

/** TFTP data packets are blksize + 4 (TFTP) + 8 (UDP) + 20 (IP) bytes on the wire. */
export function checkMtu(ifname: string, mtu: number | undefined, maxBlksize: number): Finding {
  if (mtu === undefined) return { check: 'mtu', severity: 'info', summary: `MTU of ${ifname} unknown` };
  if (mtu < maxBlksize + 32) {
    return {
      check: 'mtu',
      severity: 'warn',
      summary: `MTU ${mtu} on ${ifname} is below a TFTP block of ${maxBlksize} bytes + 32 of headers: blocks get fragmented and some PXE ROMs drop fragments`,
      fix: `set server.tftp.maxBlksize: ${Math.max(512, mtu - 32)}, or raise the MTU to 1500`,
    };
  }
  if (mtu > 1500) return { check: 'mtu', severity: 'info', summary: `MTU ${mtu} on ${ifname} (jumbo): PXE firmware sends 1500-byte frames; the switch and every machine must accept ${mtu}` };
  return { check: 'mtu', severity: 'ok', summary: `MTU ${mtu} on ${ifname}` };
}

/** net.core.rmem_max caps the receive buffer the DHCP and TFTP request sockets ask for (see udp-receive-buffer.ts). */
export function checkReceiveBufferCap(rmemMax: number | null): Finding {
  if (rmemMax === null) return { check: 'rmem_max', severity: 'info', summary: 'could not read net.core.rmem_max' };
  if (rmemMax >= BURST_RECEIVE_BYTES) {
    return { check: 'rmem_max', severity: 'ok', summary: `net.core.rmem_max ${rmemMax}: DHCP and TFTP get their ${BURST_RECEIVE_BYTES >> 20} MiB receive buffers` };
  }
  return {
    check: 'rmem_max',
    severity: 'warn',
    summary: `net.core.rmem_max ${rmemMax} caps the DHCP and TFTP receive buffers below ${BURST_RECEIVE_BYTES >> 20} MiB: when many machines power on together, requests beyond what the buffer holds are dropped, and each drop costs its machine a 4 s firmware retry`,
    fix: RMEM_MAX_FIX,
  };
}

export interface ContainerFacts {
  dockerenv: boolean;
  containerenv: boolean;
  /** $container of PID 1 (systemd-nspawn, podman, lxc set it). */
  containerVar: string | null;
  /** /proc/1/cgroup */
  cgroup: string;
}

export function detectContainer(facts: ContainerFacts): string | null {
  if (facts.dockerenv) return '/.dockerenv exists';
  if (facts.containerenv) return '/run/.containerenv exists';
  if (facts.containerVar) return `container=${facts.containerVar}`;
  const m = /(docker|containerd|kubepods|libpod|lxc)/.exec(facts.cgroup);
  return m ? `/proc/1/cgroup names ${m[1]}` : null;
}

/**
 * A container on a bridge network (Docker's default) sits behind NAT on its own segment: the
 * lab's DHCP broadcasts never reach it. Its interface is then a veth whose peer is in another
 * namespace, with the default route through it; on the host network the host's own NICs show.
 */
export function checkContainer(evidence: string | null, link: IpLink | null, defaultRouteDev: string | null): Finding {
  if (!evidence) return { check: 'container', severity: 'ok', summary: 'not in a container' };
  const veth = link?.linkinfo?.info_kind === 'veth' && link.link_netnsid !== undefined;
  if (link && veth && defaultRouteDev === link.ifname) {
    return {
      check: 'container',
      severity: 'fail',
      summary: `in a container (${evidence}) on a bridge network: ${link.ifname} is a veth with the default route; DHCP broadcasts from the machines never arrive here`,
      fix: CONTAINER_HINT,
    };
  }
  return { check: 'container', severity: 'ok', summary: `in a container (${evidence}), on the host network or a bridge the machines share${link ? ` (${link.ifname})` : ''}` };
}
