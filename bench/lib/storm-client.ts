/**
 * bench/storm's fleet: N simulated machines in one process, run inside the client namespace
 * (started by bench/storm.ts). Every machine powers on at the same instant and does, in
 * order, what a real one does: PXE firmware DHCP (arch 7) -> TFTP of the iPXE binary ->
 * iPXE DHCP (user class iPXE) -> GET the boot file (boot.ipxe) -> its per-MAC script ->
 * kernel -> initrd -> top layer -> root (ram: the whole squashfs; nbd: a recorded read trace)
 * -> POST the `up` event with the boot's event token. iPXE's four requests (boot file, script,
 * kernel, initrd) share one connection, as iPXE's connection pool does; /init's (layer, root,
 * event) each have their own, as busybox wget does. From the DHCP ACK on, its traffic
 * comes from its leased address (the namespace treats the whole pool as local: AnyIP).
 *
 *   node --import tsx bench/lib/storm-client.ts PLAN.json      -> one JSON line (ClientReport) on stdout
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loopLagSampler } from '../../server/events/loop-lag.ts';
import { DhcpMux, dhcpBoot, httpFetch, nbdReplay, tftpFirmwareGet, type HttpCounters } from './storm-protocols.ts';
import { countGc, Downloads, emptyGcStats, jitterFrom } from './storm-downloads.ts';
import { PHASES, type GcStats, type MachineResult, type Phase } from './storm-summary.ts';

export { scriptCommand } from './storm-protocols.ts';

export interface ClientPlan {
  macs: string[];
  root: 'ram' | 'nbd';
  /** NBD reads to replay (root nbd). */
  reads: [number, number, number][];
  /** A machine that is not up by then has failed. */
  deadlineMs: number;
  /**
   * The servers' namespace: each machine's leased address gets a permanent neighbour entry
   * there with the machine's own MAC. The fleet shares one NIC, and netboot's identity check
   * (full DHCP) wants the neighbour entry of the leased address to be the machine's MAC; a real
   * machine's ARP gives it that. Done for both stacks alike.
   */
  serverNs?: string;
}

/** `ip -batch` in the servers' namespace, fed one `neigh replace` per lease (one process for the whole fleet). */
class NeighbourPins {
  readonly #child: ChildProcess | null;
  constructor(ns: string | undefined, dev = 'br0') {
    this.#dev = dev;
    this.#child = ns ? spawn('ip', ['-n', ns, '-force', '-batch', '-'], { stdio: ['pipe', 'ignore', 'inherit'] }) : null;
  }
  readonly #dev: string;
  pin(ip: string, mac: string): void {
    this.#child?.stdin!.write(`neigh replace ${ip} lladdr ${mac} nud permanent dev ${this.#dev}\n`);
  }
  close(): void {
    this.#child?.stdin!.end();
  }
}

export interface ClientReport {
  startedAt: number;
  machines: MachineResult[];
  dhcpRetransmits: number;
  tftpRetransmits: number;
  /** CPU seconds the fleet process used (it shares the cores with the servers). */
  cpuSeconds: number;
  /**
   * The fleet's own event-loop delay, ms (p50, p99, max): how late the fleet itself took what
   * the servers sent. Every phase time includes it, and a DHCP or TFTP timer that fires before a
   * reply already in the socket is read counts a resend the server did not cause.
   */
  loopDelayMs?: [number, number, number];
  /** CPU seconds of the fleet's main thread (DHCP, TFTP, scripts, NBD replay); the rest of cpuSeconds is the download threads. */
  mainThreadCpuSeconds?: number;
  /** The fleet's context switches (all threads): voluntary (a thread waited for data) and involuntary (preempted). */
  contextSwitches?: { voluntary: number; involuntary: number };
  /** Garbage collections of the fleet's main thread during the storm: count and milliseconds of its pauses, major (mark-compact) and minor (scavenge). */
  gc?: GcStats;
  /** The same, summed over the download threads. */
  downloadsGc?: GcStats;
}

/** The fleet's stderr line at the instant every machine powers on (bench/storm starts the script probe on it). */
export const POWER_ON_LINE = 'storm client: power on';

const hyphens = (mac: string) => mac.replace(/:/g, '-');

/** A per-machine seed for the jitter of its waits (the MAC's last four bytes). */
function seedOf(mac: string): number {
  return Number.parseInt(mac.replace(/:/g, '').slice(-8), 16);
}

/** iPXE's HTTP part (scripts, kernel, initrd) and ram roots run on this many worker threads (bench/lib/storm-downloads.ts). */
export const DOWNLOAD_THREADS = 16;

function kernelArg(args: string[], name: string): string | undefined {
  return args.filter((a) => a.startsWith(`${name}=`)).map((a) => a.slice(name.length + 1)).at(-1);
}

async function bootOne(plan: ClientPlan, mux: DhcpMux, pins: NeighbourPins, downloads: Downloads, index: number, t0: number, tftp: { retransmits: number }): Promise<MachineResult> {
  const mac = plan.macs[index]!;
  const phases: Partial<Record<Phase, number>> = {};
  const counters: HttpCounters = { waits: 0, waitMs: 0, retries: 0 };
  const jitter = jitterFrom(seedOf(mac));
  let phase: Phase = 'dhcp-pxe';
  let mark = performance.now();
  const done = (p: Phase) => {
    const now = performance.now();
    phases[p] = now - mark;
    mark = now;
  };
  let rootBody: [number, number] | undefined;
  let rootReads: number | undefined;
  const result = (extra: Partial<MachineResult>): MachineResult => ({ mac, phases, waits: counters.waits, waitMs: counters.waitMs, retries: counters.retries, ...(rootBody ? { rootBody, rootReads } : {}), ...extra }) as MachineResult;
  try {
    const xid = (0x5e000000 + index * 16) >>> 0;
    const firmware = await dhcpBoot(mux, 'firmware', mac, xid);
    pins.pin(firmware.ip, mac);
    done('dhcp-pxe');
    phase = 'tftp';
    await tftpFirmwareGet(firmware.ip, firmware.server, firmware.bootfile, tftp);
    done('tftp');
    phase = 'dhcp-ipxe';
    const ipxe = await dhcpBoot(mux, 'ipxe', mac, xid + 1);
    if (ipxe.ip !== firmware.ip) throw new Error(`iPXE got ${ipxe.ip}, the firmware had ${firmware.ip}`);
    done('dhcp-ipxe');
    const http = { localAddress: ipxe.ip, jitter, counters };
    const addUp = (c: HttpCounters) => {
      counters.waits += c.waits;
      counters.waitMs += c.waitMs;
      counters.retries += c.retries;
    };
    // iPXE's scripts, kernel and initrd, on one connection, and bodies of megabytes (ram roots) are
    // taken in on the download threads, as a machine's own CPU would.
    phase = 'script';
    const booted = await downloads.ipxe(index, ipxe.bootfile, mac, ipxe.ip, seedOf(mac)).catch((err: Error & { counters?: HttpCounters; phase?: Phase }) => {
      if (err.counters) addUp(err.counters);
      if (err.phase) phase = err.phase;
      throw err;
    });
    addUp(booted.counters);
    Object.assign(phases, booted.result.phases);
    mark = performance.now();
    const kernelArgs = booted.result.kernelArgs;
    const bulk = async (url: string, tries: number) => {
      const got = await downloads.get(index, url, ipxe.ip, seedOf(mac), tries).catch((err: Error & { counters?: HttpCounters }) => {
        if (err.counters) addUp(err.counters);
        throw err;
      });
      addUp(got.counters);
      return got.timing;
    };
    const arg = (name: string) => {
      const value = kernelArg(kernelArgs, name);
      if (value === undefined) throw new Error(`kernel command line has no ${name}=`);
      return value;
    };
    const server = arg('netboot.server');
    const image = arg('netboot.image');
    phase = 'layer';
    await httpFetch(arg('netboot.layer'), { ...http, tries: 5 });
    done('layer');
    phase = 'root';
    if (plan.root === 'ram') {
      const timing = await bulk(`${server}/images/${image}/rootfs.squashfs?mac=${hyphens(mac)}`, 5);
      rootBody = [timing.headersAt - t0, timing.endAt - t0];
      rootReads = timing.reads;
    } else {
      const nbd = kernelArg(kernelArgs, 'netboot.nbd') ?? `${new URL(server).hostname}:10809`;
      const [host, port] = [nbd.slice(0, nbd.lastIndexOf(':')), Number(nbd.slice(nbd.lastIndexOf(':') + 1))];
      await nbdReplay(host, port, ipxe.ip, image, plan.reads, counters);
    }
    done('root');
    phase = 'up';
    const token = kernelArg(kernelArgs, 'netboot.token');
    await httpFetch(`${server}/api/machines/${hyphens(mac)}/events`, {
      ...http,
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify({ phase: 'up', t: (performance.now() - t0) / 1000, detail: `storm-${index}` }),
      tries: 5,
    });
    done('up');
    return result({ upAtMs: performance.now() - t0 });
  } catch (err) {
    return result({ failed: { phase, error: (err as Error).message } });
  }
}

/** utime + stime of one thread, from its /proc stat file. */
function threadCpuSeconds(statFile: string): number {
  const fields = readFileSync(statFile, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function roundGc(stats: GcStats): GcStats {
  return { major: stats.major, majorMs: Math.round(stats.majorMs), minor: stats.minor, minorMs: Math.round(stats.minorMs) };
}

async function main(): Promise<void> {
  const plan = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as ClientPlan;
  const mux = await DhcpMux.open();
  const pins = new NeighbourPins(plan.serverNs);
  const downloads = new Downloads(DOWNLOAD_THREADS);
  await downloads.ready;
  const tftp = { retransmits: 0 };
  const loopLag = loopLagSampler();
  const gc = emptyGcStats();
  const gcObserver = countGc(gc);
  const downloadsGcBefore = await downloads.gcStats();
  // Counted from power-on, as the GC entries are (not the fleet's start-up).
  const usageAtPowerOn = process.resourceUsage();
  process.stderr.write(`${POWER_ON_LINE}\n`);
  const startedAt = Date.now();
  const t0 = performance.now();
  let up = 0;
  const progress = setInterval(() => process.stderr.write(`storm client: ${up}/${plan.macs.length} up at ${((performance.now() - t0) / 1000).toFixed(0)} s\n`), 10_000);
  const machines = await Promise.all(
    plan.macs.map((_, i) =>
      Promise.race([
        bootOne(plan, mux, pins, downloads, i, t0, tftp).then((r) => {
          if (!r.failed) up++;
          return r;
        }),
        new Promise<MachineResult>((resolve) =>
          setTimeout(() => resolve({ mac: plan.macs[i]!, phases: {}, waits: 0, waitMs: 0, retries: 0, failed: { phase: 'up', error: `not up within ${plan.deadlineMs / 1000} s` } }), plan.deadlineMs).unref(),
        ),
      ]),
    ),
  );
  clearInterval(progress);
  mux.close();
  pins.close();
  const downloadsGcAfter = await downloads.gcStats();
  await downloads.close();
  const cpu = process.cpuUsage();
  const usage = process.resourceUsage();
  const lag = loopLag.take();
  gcObserver.disconnect();
  const delayMs = (seconds: number) => Math.round(seconds * 1e4) / 10;
  const report: ClientReport = {
    startedAt,
    machines,
    dhcpRetransmits: mux.retransmits,
    tftpRetransmits: tftp.retransmits,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    loopDelayMs: [delayMs(lag.p50), delayMs(lag.p99), delayMs(lag.max)],
    mainThreadCpuSeconds: threadCpuSeconds(`/proc/self/task/${process.pid}/stat`),
    contextSwitches: {
      voluntary: usage.voluntaryContextSwitches - usageAtPowerOn.voluntaryContextSwitches,
      involuntary: usage.involuntaryContextSwitches - usageAtPowerOn.involuntaryContextSwitches,
    },
    gc: roundGc(gc),
    downloadsGc: roundGc({
      major: downloadsGcAfter.major - downloadsGcBefore.major,
      majorMs: downloadsGcAfter.majorMs - downloadsGcBefore.majorMs,
      minor: downloadsGcAfter.minor - downloadsGcBefore.minor,
      minorMs: downloadsGcAfter.minorMs - downloadsGcBefore.minorMs,
    }),
  };
  // Exit once the line is out: a pipe the reader has not emptied takes the rest asynchronously, and an exit at once would cut it.
  process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(0));
}

if (process.argv[1] === import.meta.filename) await main();
export { PHASES };
