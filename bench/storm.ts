/**
 * bench/storm (issue 15): a boot storm. N simulated machines power on at once and boot, each
 * doing in order what a real one does (bench/lib/storm-client.ts): PXE firmware DHCP (arch 7)
 * -> TFTP of snponly.efi in lockstep -> iPXE DHCP -> boot.ipxe -> per-MAC script -> kernel ->
 * initrd -> top layer -> root (ram: the whole squashfs; nbd: replay of a read trace recorded
 * from a real VM, bench/fixtures/storm-nbd-trace.json) -> the `up` event. Same fleet, same run,
 * against netboot (full DHCP mode) and the peer stack (dnsmasq DHCP+TFTP, nginx sendfile,
 * nbd-server; bench/lib/storm-stacks.ts), one after the other, on one private segment:
 * servers in one namespace at 10.88.20.1/22, the fleet in another (its own MAC in every DHCP
 * packet; its leased address as source of everything after, the pool routed as local there).
 * The image is the e2e suite's busybox image from the fixture cache (never rebuilt here).
 *
 *   node --import tsx bench/storm.ts [--machines 200] [--root ram|nbd] [--link-mbit M]
 *        [--only netboot|peer] [--deadline-s 900]
 *        [--max-root-streams K]     (netboot's server.admission.maxRootStreams; default: netboot's own; 0 = no limit)
 *        [--tftp-max-transfers K]   (both stacks' TFTP limit; default max(64, 2N): a size probe and a download per machine)
 *        [--rounds R]               (R storms per stack, alternating which goes first, each on a fresh stack; the final line compares medians)
 *        [--warm]                   (the same fleet boots once, unmeasured, before the measured storm: a server that has booted its fleet before)
 *   node --import tsx bench/storm.ts --record-trace      (re-records the NBD trace: QEMU, minutes)
 *   STORM_DUMP_DIR=DIR: also writes each stack's raw fleet report (every machine's phases) there
 *
 * --link-mbit shapes the server -> fleet direction of the segment (htb on the bridge port) so
 * the link, not loopback speed, is the shared resource. Needs root. Prints per-phase p50/p99,
 * failures, 503 waits, time until all are up, server CPU and peak RSS, the script times of one
 * more machine probing from its own idle process (bench/lib/storm-probe.ts: the fleet's phase
 * times include the fleet's own backlog, whose event-loop delay is printed too), and ends with
 *   storm: N machines, F failed, netboot X s vs peer Y s = R.RRx
 * (F: netboot's failed machines; R = X / Y, below 1 means netboot got the fleet up sooner). One
 * storm on 2 shared cores varies by about 10 % from run to run (the same build gave 0.88x and
 * 1.17x), more than the gaps this bench is for: --rounds 3 or more for a figure to rely on.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { addClientNamespace, createSegment, type ClientNamespace, type Segment } from '../server/lab/netns.ts';
import { cleanupOnInterrupt } from './lib/interrupt.ts';
import { POWER_ON_LINE, type ClientPlan, type ClientReport } from './lib/storm-client.ts';
import { E2E_CACHE, prepareStormCache, stormImageId } from './lib/storm-image.ts';
import { watchStack } from './lib/storm-procs.ts';
import { CLIENT_IP, netbootLogPath, nginxAccessLogPath, POOL_ROUTES, PREFIX, SERVER_IP, startNetboot, startPeer, STORM_IPXE_EFI, type RunningStack, type StackSpec } from './lib/storm-stacks.ts';
import { failureSamples, finalLine, fleetLagLines, netbootScriptTimes, nginxScriptTimes, phaseTable, pooledRun, probeLines, rootWindowLines, roundsLine, stackTable, threadLines, type ProbeReport, type StackRun } from './lib/storm-summary.ts';
import type { NbdTrace } from './lib/storm-trace.ts';

const run = promisify(execFile);
const REPO = join(import.meta.dirname, '..');
const TRACE = join(REPO, 'bench/fixtures/storm-nbd-trace.json');

function stringArg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function numberArg(name: string, fallback: number): number {
  const value = stringArg(name);
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} ${value}: expected a positive number`);
  return n;
}

const MAC_PREFIX = '52:54:00:88';

/** 52:54:00:88:<hi>:<lo>, i from 1. */
export function stormMac(i: number): string {
  return `${MAC_PREFIX}:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`;
}

async function wireSegment(segment: Segment, linkMbit: number | undefined): Promise<ClientNamespace> {
  const ip = (ns: string, ...args: string[]) => run('ip', ['-n', ns, ...args]);
  // createSegment gives the bridge a /24; the fleet needs up to 766 addresses.
  await ip(segment.ns, 'addr', 'del', `${SERVER_IP}/24`, 'dev', segment.bridge);
  await ip(segment.ns, 'addr', 'add', `${SERVER_IP}/${PREFIX}`, 'dev', segment.bridge);
  // Removing the bridge's only address flushed the broadcast route createSegment had added.
  await ip(segment.ns, 'route', 'replace', '255.255.255.255/32', 'dev', segment.bridge);
  const client = await addClientNamespace(segment);
  await ip(client.ns, 'addr', 'add', `${CLIENT_IP}/${PREFIX}`, 'dev', client.ifname);
  // Every pool address is "ours" in the fleet's namespace (AnyIP): a machine sends from its lease.
  for (const route of POOL_ROUTES) await ip(client.ns, 'route', 'add', 'local', route, 'dev', 'lo');
  await client.exec('sysctl', ['-q', '-w', 'net.ipv4.ip_local_port_range=1024 65000']);
  // The fleet shares one NIC: frames the server sends to a machine's own MAC (dnsmasq's unicast
  // OFFER/ACK to a client without the broadcast flag, iPXE's case) are readdressed to that NIC on their way out.
  const { stdout: link } = await ip(client.ns, '-j', 'link', 'show', client.ifname);
  const nicMac = (JSON.parse(link) as { address: string }[])[0]!.address;
  await segment.exec('ebtables', ['-t', 'nat', '-A', 'OUTPUT', '-d', `${MAC_PREFIX}:00:00/ff:ff:ff:ff:00:00`, '-j', 'dnat', '--to-destination', nicMac]);
  if (linkMbit !== undefined) {
    const { stdout } = await ip(segment.ns, '-o', 'link', 'show', 'master', segment.bridge);
    const port = /^\d+:\s+([^@:]+)/.exec(stdout.trim())?.[1];
    if (!port) throw new Error(`no bridge port to shape in ${stdout}`);
    await segment.exec('tc', ['qdisc', 'add', 'dev', port, 'root', 'handle', '1:', 'htb', 'default', '10']);
    await segment.exec('tc', ['class', 'add', 'dev', port, 'parent', '1:', 'classid', '1:10', 'htb', 'rate', `${linkMbit}mbit`, 'ceil', `${linkMbit}mbit`]);
  }
  return client;
}

/**
 * The fleet is one process playing every machine: with V8's default heap sizing its main thread
 * ran 69-79 mark-compacts per 500-machine storm on netboot (27-39 on the peer, whose DHCP drops
 * spread the machines out), and their concurrent marking took cores from the servers. Old space
 * starts at 1 GiB instead: no mark-compact in a storm, the fleet 5-8 CPU-s cheaper on netboot and
 * 2-4 on the peer (bench/storm --root nbd, 2 rounds each way).
 */
const FLEET_NODE_ARGS = ['--initial-old-space-size=1024'];

async function runFleet(client: ClientNamespace, planFile: string, onPowerOn: () => void): Promise<ClientReport> {
  // STORM_FLEET_NODE_ARGS: more node flags for the fleet process only (experiments with its heap and GC).
  const nodeArgs = process.env.STORM_FLEET_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];
  const child = client.spawn('node', [...FLEET_NODE_ARGS, ...nodeArgs, '--import', 'tsx', join(REPO, 'bench/lib/storm-client.ts'), planFile], { cwd: REPO });
  createInterface({ input: child.stderr! }).on('line', (line) => {
    if (line === POWER_ON_LINE) onPowerOn();
    else process.stderr.write(`${line}\n`);
  });
  return new Promise((resolve, reject) => {
    let got = false;
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!line.startsWith('{')) return;
      got = true;
      resolve(JSON.parse(line) as ClientReport);
    });
    child.once('exit', (code) => {
      if (!got) reject(new Error(`the fleet exited with ${code} and no report`));
    });
  });
}

/** The script probe (bench/lib/storm-probe.ts), leased and waiting: go() starts its requests, finish() ends them and gives its report. */
async function startProbe(client: ClientNamespace, mac: string, serverNs: string): Promise<{ go(): void; finish(): Promise<ProbeReport> }> {
  const child = client.spawn('node', ['--import', 'tsx', join(REPO, 'bench/lib/storm-probe.ts'), mac, serverNs], { cwd: REPO });
  child.stderr!.pipe(process.stderr);
  const lines = createInterface({ input: child.stdout! });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const next = () =>
    Promise.race([
      new Promise<string>((resolve) => lines.once('line', resolve)),
      exited.then((code) => Promise.reject(new Error(`the script probe exited with ${code}`))),
    ]);
  const ready = await next();
  if (ready !== 'ready') throw new Error(`the script probe said ${JSON.stringify(ready)}, not ready`);
  return {
    go: () => child.stdin!.write('go\n'),
    finish: async () => {
      const report = next();
      child.stdin!.end();
      return JSON.parse(await report) as ProbeReport;
    },
  };
}

async function storm(): Promise<void> {
  const n = Math.floor(numberArg('machines', 200));
  if (n > 765) throw new Error('--machines: at most 765 (the pool 10.88.21.1 - 10.88.23.254 less one address for the script probe)');
  const root = stringArg('root') ?? 'ram';
  if (root !== 'ram' && root !== 'nbd') throw new Error(`--root ${root}: expected ram or nbd`);
  const linkArg = stringArg('link-mbit');
  const linkMbit = linkArg === undefined ? undefined : numberArg('link-mbit', 0);
  const only = stringArg('only');
  if (only !== undefined && only !== 'netboot' && only !== 'peer') throw new Error(`--only ${only}: expected netboot or peer`);
  const deadlineMs = numberArg('deadline-s', 900) * 1000;
  // Firmware asks for the size first (a transfer aborted after the OACK) and at once for the file:
  // two transfers per machine can be open together, and a refused RRQ fails the firmware's boot.
  const tftpMaxTransfers = Math.floor(numberArg('tftp-max-transfers', Math.max(64, 2 * n)));
  const rootStreamsArg = stringArg('max-root-streams');
  const maxRootStreams = rootStreamsArg === undefined ? undefined : Number(rootStreamsArg);
  if (maxRootStreams !== undefined && !(Number.isInteger(maxRootStreams) && maxRootStreams >= 0)) throw new Error(`--max-root-streams ${rootStreamsArg}: expected an integer >= 0`);
  const rounds = Math.floor(numberArg('rounds', 1));
  // A stack that has booted this fleet once already (yesterday's boots, the last kernel update): netboot's
  // hot paths are compiled by then (V8 compiles them during the first storm: about 1.4 CPU-s of it at 500
  // machines) and both stacks hold the machines' leases. Without it, the storm hits a stack started just before.
  const warm = process.argv.includes('--warm');
  const macs = Array.from({ length: n }, (_, i) => stormMac(i + 1));
  // One more machine, known to both stacks, that times script requests from an idle process.
  const probeMac = stormMac(n + 1);
  const imageId = stormImageId();
  let reads: [number, number, number][] = [];
  let traceNote: string | null = null;
  if (root === 'nbd') {
    if (!existsSync(TRACE)) throw new Error(`${TRACE} is missing: record it with --record-trace`);
    const trace = JSON.parse(readFileSync(TRACE, 'utf8')) as NbdTrace;
    reads = trace.reads;
    // Another build of the same image (the id follows Debian's packages): the reads are replayed
    // as recorded, which is the same load as long as they stay inside the file.
    const size = statSync(join(E2E_CACHE, 'images', imageId, 'rootfs.squashfs')).size;
    if (reads.some(([offset, length]) => offset + length > size)) throw new Error(`${TRACE} (recorded on image ${trace.imageId}) reads beyond ${imageId}'s squashfs: re-record it with --record-trace`);
    if (trace.imageId !== imageId) traceNote = `NBD trace recorded on image ${trace.imageId}, replayed on ${imageId} (a rebuild of the same image)`;
  }

  // /var/tmp: the same file system as the fixture cache, so the image is hard-linked, not copied.
  const workDir = await mkdtemp('/var/tmp/storm-');
  let segment: Segment | null = null;
  let stack: RunningStack | null = null;
  const cleanup = async () => {
    await stack?.stop().catch(() => undefined);
    stack = null;
    await segment?.destroy();
    segment = null;
    if (!process.env.STORM_KEEP) await rm(workDir, { recursive: true, force: true });
  };
  const unregister = cleanupOnInterrupt(cleanup);
  const runs: StackRun[] = [];
  const netbootRuns: StackRun[] = [];
  const peerRuns: StackRun[] = [];
  let rootBytes = 0;
  try {
    const cacheDir = join(workDir, 'cache');
    const imageDir = await prepareStormCache(cacheDir, ['storm'], imageId);
    rootBytes = statSync(join(imageDir, 'rootfs.squashfs')).size;
    // Both stacks read the same inodes: warm the page cache once, so neither pays the disk.
    await run('cat', [join(imageDir, 'vmlinuz'), join(imageDir, 'initrd.img'), join(imageDir, 'rootfs.squashfs')], { maxBuffer: 1 << 30, encoding: 'buffer' });
    segment = await createSegment({ serverIp: SERVER_IP });
    const client = await wireSegment(segment, linkMbit);
    const planFile = join(workDir, 'plan.json');
    const plan: ClientPlan = { macs, root, reads, deadlineMs, serverNs: segment.ns };
    await writeFile(planFile, JSON.stringify(plan));
    for (let round = 1; round <= rounds; round++) {
      // Which stack goes first alternates: nothing that drifts over the run (page cache, the host's other load) favours one.
      const order = round % 2 === 1 ? (['netboot', 'peer'] as const) : (['peer', 'netboot'] as const);
      const roundDir = rounds > 1 ? join(workDir, `round-${round}`) : workDir;
      const spec: StackSpec = { workDir: roundDir, segment, macs: [...macs, probeMac], root, imageId, cacheDir, tftpMaxTransfers, maxRootStreams };
      for (const name of order) {
        if (only && only !== name) continue;
        const label = rounds > 1 ? `${name} ${round}` : name;
        process.stderr.write(`storm: ${label}: starting the stack\n`);
        stack = name === 'netboot' ? await startNetboot(spec) : await startPeer(spec);
        if (warm) {
          const first = await runFleet(client, planFile, () => undefined);
          const up = first.machines.filter((m) => !m.failed).length;
          process.stderr.write(`storm: ${label}: warm-up storm: ${up}/${n} up, the last after ${(Math.max(0, ...first.machines.map((m) => m.upAtMs ?? 0)) / 1000).toFixed(1)} s\n`);
        }
        const watch = await watchStack(segment.ns);
        process.stderr.write(`storm: ${label}: ${n} machines power on\n`);
        const probe = await startProbe(client, probeMac, segment.ns);
        const report = await runFleet(client, planFile, () => probe.go());
        const probeReport = await probe.finish();
        // Every machine's phases and timings, for a closer look than the summary's percentiles.
        if (process.env.STORM_DUMP_DIR) await writeFile(join(process.env.STORM_DUMP_DIR, `storm-${name}-${root}-${n}${rounds > 1 ? `-${round}` : ''}.json`), JSON.stringify({ fleet: report, probe: probeReport }));
        const usage = await watch.stop();
        await stack.stop();
        stack = null;
        const serverLog = readFileSync(name === 'netboot' ? netbootLogPath(roundDir) : nginxAccessLogPath(roundDir), 'utf8');
        const serverScriptMs = name === 'netboot' ? netbootScriptTimes(serverLog) : nginxScriptTimes(serverLog);
        runs.push({ stack: label, machines: report.machines, ...usage, dhcpRetransmits: report.dhcpRetransmits, tftpRetransmits: report.tftpRetransmits, fleetCpuSeconds: report.cpuSeconds, ...(report.loopDelayMs ? { fleetLoopDelayMs: report.loopDelayMs } : {}), ...(report.mainThreadCpuSeconds === undefined ? {} : { fleetMainCpuSeconds: report.mainThreadCpuSeconds }), ...(report.contextSwitches ? { fleetContextSwitches: report.contextSwitches } : {}), ...(report.gc ? { fleetGc: report.gc } : {}), ...(report.downloadsGc ? { fleetDownloadsGc: report.downloadsGc } : {}), serverScriptMs, probe: probeReport });
        (name === 'netboot' ? netbootRuns : peerRuns).push(runs.at(-1)!);
      }
    }
  } finally {
    await cleanup();
    unregister();
  }

  const out: string[] = [];
  out.push(`\nbench/storm: ${n} machines, root ${root}${linkMbit ? `, link ${linkMbit} Mbit/s` : ', unshaped veth'}${maxRootStreams === undefined ? '' : `, netboot admission.maxRootStreams ${maxRootStreams}`}${warm ? ', warm (the fleet had booted once on each stack)' : ', cold (each stack started just before)'}, image ${imageId} (e2e busybox)`);
  if (traceNote) out.push(traceNote);
  out.push(`TFTP: both stacks serve ${STORM_IPXE_EFI} (${Math.round(statSync(STORM_IPXE_EFI).size / 1024)} KiB) to the firmware`);
  out.push(`per phase, over the machines that finished it${rounds > 1 ? ` in any of the ${rounds} rounds` : ''} (script = boot.ipxe + per-MAC script; root waits in a queue count in the phase)\n`);
  const pooled = rounds > 1 ? [netbootRuns, peerRuns].filter((r) => r.length > 0).map((r) => pooledRun(r[0]!.stack.split(' ')[0]!, r)) : runs;
  out.push(phaseTable(pooled));
  out.push('');
  out.push(stackTable(runs));
  out.push(...threadLines(runs));
  out.push(...probeLines(runs));
  out.push(...fleetLagLines(runs));
  if (root === 'ram') out.push(...rootWindowLines(runs, rootBytes));
  for (const r of runs) for (const sample of failureSamples(r)) out.push(`  ${r.stack} failure: ${sample}`);
  out.push(`load average at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 shared cores; the fleet runs on them too)`);
  if (rounds > 1 && netbootRuns.length > 0 && peerRuns.length > 0) out.push(roundsLine(netbootRuns, peerRuns));
  if (netbootRuns.length > 0 && peerRuns.length > 0) out.push(finalLine(netbootRuns, peerRuns));
  process.stdout.write(`${out.join('\n')}\n`);
}

if (process.argv.includes('--record-trace')) {
  const { recordNbdTrace } = await import('./lib/record-nbd-trace.ts');
  await recordNbdTrace();
} else {
  await storm();
}
