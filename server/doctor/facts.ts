import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { access, constants, readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type Dockerode from 'dockerode';
import { findTool } from '../host-tools.ts';
import { defaultDocker } from '../images/docker-source.ts';
import { buildDiscover, parseOffer, testMac, type Offer, type ProbeResult } from './dhcp.ts';
import { parseRdisc6, type RaObservation } from './ipv6-ra.ts';
import type { ImageFacts } from './images.ts';
import type { ContainerFacts, IpLink } from './network.ts';

/**
 * The I/O edge of `netboot doctor`: runs ip/ss/iptables/nft/rdisc6, reads /proc, sends the one
 * DHCPDISCOVER. Everything here only gathers; the checks that judge are pure functions.
 */

/** stdout of a command, or null when it is missing or fails. */
export function output(cmd: string, args: string[], timeoutMs = 10_000): Promise<{ stdout: string; stderr: string; code: number } | null> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return resolve(null);
      resolve({ stdout, stderr, code: err ? (typeof err.code === 'number' ? err.code : 1) : 0 });
    });
  });
}

async function json<T>(cmd: string, args: string[]): Promise<T | null> {
  const result = await output(cmd, args);
  if (!result || result.code !== 0) return null;
  try {
    return JSON.parse(result.stdout) as T;
  } catch {
    return null;
  }
}

export const links = async (): Promise<IpLink[]> => (await json<IpLink[]>('ip', ['-j', '-d', 'addr', 'show'])) ?? [];

export async function defaultRouteDev(): Promise<string | null> {
  const routes = await json<{ dev?: string }[]>('ip', ['-j', 'route', 'show', 'default']);
  return routes?.[0]?.dev ?? null;
}

export async function broadcastRouteDev(): Promise<string | null> {
  const routes = await json<{ dev?: string }[]>('ip', ['-j', 'route', 'get', '255.255.255.255']);
  return routes?.[0]?.dev ?? null;
}

export async function listeners(): Promise<string> {
  return (await output('ss', ['-H', '-l', '-n', '-p', '-u', '-t']))?.stdout ?? '';
}

export async function cmdline(pid: number): Promise<string[]> {
  const raw = await readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '');
  return raw.split('\0').filter(Boolean);
}

async function sysctlNumber(path: string): Promise<number | null> {
  const text = await readFile(path, 'utf8').catch(() => null);
  return text === null || !/^\d+/.test(text.trim()) ? null : Number(text.trim());
}

export const rmemMax = (): Promise<number | null> => sysctlNumber('/proc/sys/net/core/rmem_max');

export async function rpFilter(ifname: string): Promise<{ all: number | null; iface: number | null }> {
  return {
    all: await sysctlNumber('/proc/sys/net/ipv4/conf/all/rp_filter'),
    iface: /^[\w.@-]+$/.test(ifname) ? await sysctlNumber(`/proc/sys/net/ipv4/conf/${ifname}/rp_filter`) : null,
  };
}

/** The rules as text, or null when the tool is missing or may not read them (not root). */
export async function firewallRules(): Promise<{ iptables: string | null; nft: string | null }> {
  const [ipt, nft] = await Promise.all([output('iptables-save', []), output('nft', ['list', 'ruleset'])]);
  return { iptables: ipt && ipt.code === 0 ? ipt.stdout : null, nft: nft && nft.code === 0 ? nft.stdout : null };
}

const exists = (path: string) => access(path).then(() => true, () => false);

export async function containerFacts(): Promise<ContainerFacts> {
  const environ = await readFile('/proc/1/environ', 'latin1').catch(() => '');
  const containerVar = environ.split('\0').find((v) => v.startsWith('container='))?.slice('container='.length) ?? process.env.container ?? null;
  return {
    dockerenv: await exists('/.dockerenv'),
    containerenv: await exists('/run/.containerenv'),
    containerVar: containerVar || null,
    cgroup: await readFile('/proc/1/cgroup', 'utf8').catch(() => ''),
  };
}

/** One Router Solicitation on the interface (rdisc6), else the kernel's routes learnt from RAs. */
export async function routerAdvertisements(ifname: string, waitMs: number): Promise<RaObservation> {
  if (await findTool('rdisc6')) {
    // A link-local address still in duplicate address detection cannot send the RS ("Cannot
    // assign requested address"): an interface brought up a moment ago needs a second or two.
    await linkLocalReady(ifname, 5000);
    const result = await output('rdisc6', ['-1', '-r', '1', '-w', String(waitMs), ifname], waitMs + 5000);
    if (!result) return { method: 'none', reason: 'rdisc6 could not run' };
    const advertisements = parseRdisc6(result.stdout);
    if (advertisements.length || result.code === 0 || /timed out/i.test(result.stderr + result.stdout)) return { method: 'rdisc6', advertisements };
    return { method: 'rdisc6', advertisements, error: (result.stderr || result.stdout).trim().split('\n').pop() ?? `exit ${result.code}` };
  }
  const routes = await json<{ protocol?: string }[]>('ip', ['-j', '-6', 'route', 'show', 'dev', ifname]);
  if (routes === null) return { method: 'none', reason: 'no rdisc6 (package ndisc6) and no IPv6 routes readable' };
  return { method: 'routes', raRoute: routes.some((r) => r.protocol === 'ra') };
}

/** Waits (at most `timeoutMs`) until `ifname` has an IPv6 link-local address out of DAD. */
async function linkLocalReady(ifname: string, timeoutMs: number): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(100)) {
    const addrs = await json<{ addr_info?: { scope?: string; tentative?: boolean }[] }[]>('ip', ['-j', '-6', 'addr', 'show', 'dev', ifname]);
    const linkLocal = addrs?.flatMap((a) => a.addr_info ?? []).filter((a) => a.scope === 'link') ?? [];
    if (addrs === null || linkLocal.length === 0 || linkLocal.some((a) => !a.tentative)) return;
  }
}

/** Sends one DHCPDISCOVER to `destination` and collects the offers for `waitMs`. */
export async function probeDhcp(destination: string, waitMs: number): Promise<ProbeResult> {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  const offers: Offer[] = [];
  const mac = testMac(randomBytes(3));
  const xid = randomBytes(4).readUInt32BE(0);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(68, '0.0.0.0', () => {
        socket.off('error', reject);
        resolve();
      });
    });
    socket.setBroadcast(true);
    let sentAt = 0;
    socket.on('message', (packet, from) => {
      const offer = parseOffer(packet, from.address, xid, mac);
      if (offer) offers.push({ ...offer, afterMs: Date.now() - sentAt });
    });
    socket.on('error', () => undefined);
    sentAt = Date.now();
    await new Promise<void>((resolve, reject) => socket.send(buildDiscover(mac, xid), 67, destination, (err) => (err ? reject(err) : resolve())));
    await sleep(waitMs);
    return { ok: true, offers, waitedMs: waitMs, mac, destination };
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  } finally {
    socket.close();
  }
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms / 1000} s`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function engineName(docker: Dockerode): string {
  const m = docker.modem as unknown as { socketPath?: string; host?: string; port?: number };
  return m.socketPath ? `unix://${m.socketPath}` : `${m.host}:${m.port}`;
}

/** Whether each image's source resolves right now, without pulling or building anything. */
export async function imageSources(images: readonly { name: string; source: string }[], docker?: Dockerode): Promise<Map<string, ImageFacts['sourceState']>> {
  const out = new Map<string, ImageFacts['sourceState']>();
  let engine: Dockerode | null = null;
  let engineError: string | null = null;
  for (const image of images) {
    const colon = image.source.indexOf(':');
    const kind = image.source.slice(0, colon);
    const ref = image.source.slice(colon + 1);
    if (kind === 'oci-archive') {
      try {
        await access(ref, constants.R_OK);
        const info = await stat(ref);
        out.set(image.name, info.isFile() ? { state: 'ok', detail: `archive readable (${(info.size / 1e6).toFixed(1)} MB)` } : { state: 'error', detail: `${ref} is not a file` });
      } catch (err) {
        out.set(image.name, { state: 'error', detail: `${ref}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
      }
      continue;
    }
    if (!engine && !engineError) {
      engine = docker ?? defaultDocker();
      try {
        await withTimeout(engine.ping(), 5000, 'Docker engine');
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        engineError = `cannot reach the Docker engine at ${engineName(engine)} (${code ?? (err as Error).message}): is dockerd running? (DOCKER_HOST selects another engine)`;
      }
    }
    if (engineError || !engine) {
      out.set(image.name, { state: 'error', detail: engineError ?? 'no engine' });
      continue;
    }
    try {
      const info = await withTimeout(engine.getImage(ref).inspect(), 5000, 'Docker engine');
      out.set(image.name, { state: 'ok', detail: `in the engine at ${engineName(engine)} (${info.Id.slice(0, 19)})` });
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) out.set(image.name, { state: 'missing', detail: `not in the engine at ${engineName(engine)}: serve pulls ${ref} (the registry must be reachable)` });
      else out.set(image.name, { state: 'error', detail: (err as Error).message });
    }
  }
  return out;
}
