import type { Config } from '../config/types.ts';
import { ImageCache } from '../images/cache.ts';
import { silentLogger } from '../log.ts';
import { checkDhcp, discoverDestination } from './dhcp.ts';
import * as facts from './facts.ts';
import type { Finding } from './finding.ts';
import { checkFirewall, firewallProbes } from './firewall.ts';
import { checkImages } from './images.ts';
import { checkRouterAdvert, type RaSetting } from './ipv6-ra.ts';
import { checkAddress, checkContainer, checkMtu, checkPorts, checkReceiveBufferCap, checkRpFilter, detectContainer, isNetbootServe, parseSs, requiredPorts } from './network.ts';

export interface DoctorOptions {
  /** The interface facing the machines; default: the one holding server.address. */
  interface?: string;
  /** How long to listen for DHCP offers and a router advertisement. */
  waitMs?: number;
}

export interface DoctorReport {
  config: string;
  interface: string | null;
  findings: Finding[];
}

/** Gathers the facts (in parallel where they wait on the network) and runs every check on them. */
export async function runDoctor(config: Config, options: DoctorOptions = {}): Promise<DoctorReport> {
  const waitMs = options.waitMs ?? 5000;
  const { server } = config;
  const [links, containerFacts, defaultDev, broadcastDev, ssText] = await Promise.all([
    facts.links(),
    facts.containerFacts(),
    facts.defaultRouteDev(),
    facts.broadcastRouteDev(),
    facts.listeners(),
  ]);
  const evidence = detectContainer(containerFacts);
  const address = checkAddress(links, server.address, { interface: options.interface, inContainer: evidence !== null });
  const link = address.link;
  const findings: Finding[] = [address.finding, checkContainer(evidence, link, defaultDev)];

  const listening = parseSs(ssText);
  const netbootPids = new Set<number>();
  for (const pid of new Set(listening.flatMap((l) => l.processes.map((p) => p.pid)))) {
    if (isNetbootServe(await facts.cmdline(pid))) netbootPids.add(pid);
  }
  const needs = requiredPorts({
    bind: server.bind,
    httpPort: server.httpPort,
    dhcpMode: server.dhcp.mode,
    tftp: server.tftp,
    nbdPort: [...config.images.values()].some((i) => i.root === 'nbd') ? server.nbd.port : null,
  });
  findings.push(...checkPorts(needs, listening, server.bind, netbootPids));

  const images = [...config.images.values()];
  const imageFacts = (async () => {
    const cache = new ImageCache({ cacheDir: server.cacheDir, log: silentLogger });
    const sources = await facts.imageSources(images);
    return Promise.all(
      images.map(async (image) => ({
        name: image.name,
        source: image.source,
        builtId: await cache.currentId(image.name).catch(() => null),
        sourceState: sources.get(image.name) ?? { state: 'error' as const, detail: 'not checked' },
      })),
    );
  })();

  if (link) {
    const ifname = link.ifname;
    const own = (link.addr_info ?? []).find((a) => a.family === 'inet' && a.local === server.address) ?? (link.addr_info ?? []).find((a) => a.family === 'inet');
    // Read loosely: the setting is newer than this check and may be absent from a config type.
    const setting = (server as unknown as { ipv6RouterAdvert?: unknown }).ipv6RouterAdvert;
    const [probe, ra, rules, rp] = await Promise.all([
      own ? facts.probeDhcp(discoverDestination(broadcastDev, ifname, own.local, own.prefixlen), waitMs) : Promise.resolve({ ok: false as const, error: `${ifname} has no IPv4 address to send from` }),
      facts.routerAdvertisements(ifname, waitMs),
      facts.firewallRules(),
      facts.rpFilter(ifname),
    ]);
    findings.push(...checkDhcp(probe, server.dhcp.mode, server.address, server.httpPort));
    findings.push(checkRouterAdvert(ra, setting === 'auto' || setting === 'off' ? (setting as RaSetting) : undefined, ifname, server.dhcp.mode));
    findings.push(...checkFirewall(rules, firewallProbes(needs, ifname, server.tftp.enabled)));
    findings.push(checkRpFilter(rp, ifname, defaultDev));
    findings.push(checkMtu(ifname, link.mtu, server.tftp.maxBlksize));
  } else {
    findings.push({
      check: 'dhcp',
      severity: 'info',
      summary: 'network checks skipped (DHCP, router advertisements, firewall, rp_filter, MTU): no interface to check',
      fix: 'fix server.address first, or name the interface with --interface',
    });
  }
  if (server.dhcp.mode !== 'off' || server.tftp.enabled) findings.push(checkReceiveBufferCap(await facts.rmemMax()));
  findings.push(...checkImages(await imageFacts, server.cacheDir));
  return { config: config.file, interface: link?.ifname ?? null, findings };
}
