/** bench/storm's figures: per-phase percentiles, failures, waits and the final comparison line. Pure. */

export const PHASES = ['dhcp-pxe', 'tftp', 'dhcp-ipxe', 'script', 'kernel', 'initrd', 'layer', 'root', 'up'] as const;
export type Phase = (typeof PHASES)[number];

export interface MachineResult {
  mac: string;
  /** Milliseconds each finished phase took (waits for admission included). */
  phases: Partial<Record<Phase, number>>;
  /** 503 + Retry-After answers honoured (not failures) and the time spent waiting. */
  waits: number;
  waitMs: number;
  /** Failed attempts that were retried (connection refused, HTTP errors other than 503). */
  retries: number;
  /** Root ram: ms from power-on to the root download's 200 headers and to its body's end (the body alone, without queue waits). */
  rootBody?: [number, number];
  /** Root ram: 'data' events the fleet took the body in (the bytes each of its reads returned, on average: bytes / reads). */
  rootReads?: number;
  /** Milliseconds from power-on to the `up` event's answer. */
  upAtMs?: number;
  failed?: { phase: Phase; error: string };
}

/** bench/lib/storm-probe.ts: script requests timed from an idle process while the fleet boots. */
export interface ProbeReport {
  /** Milliseconds per request, in the order sent: boot.ipxe, and the per-MAC script it chains to. */
  entryMs: number[];
  machineMs: number[];
  /** When each boot.ipxe request was sent, ms after `go` (where in the storm a slow one fell). */
  entryAtMs?: number[];
  /** Requests that got no answer or no 200. */
  failures: number;
  /** The first few distinct errors. */
  errors: string[];
  /** netboot only: its main loop's lateness from `/metrics` every SERVER_LAG_EVERY_MS (p99 and longest per reading, ms). */
  serverLoopLagMs?: { p99: number[]; max: number[] };
}

/** Garbage collections of one or more threads: count and pause milliseconds, major (mark-compact) and minor (scavenge). */
export interface GcStats {
  major: number;
  majorMs: number;
  minor: number;
  minorMs: number;
}

export interface StackRun {
  stack: string;
  machines: MachineResult[];
  /** Server processes: CPU seconds during the storm, peak resident set (sum over the stack's processes). */
  cpuSeconds: number;
  peakRssBytes: number;
  dhcpRetransmits: number;
  tftpRetransmits: number;
  /** Server CPU seconds per thread name, busiest first (bench/lib/storm-procs.ts). */
  threadCpu?: { name: string; seconds: number; threads: number }[];
  /** CPU seconds of the simulated fleet (one process, on the same cores). */
  fleetCpuSeconds?: number;
  /** The fleet's event-loop delay, ms: p50, p99, max (its own lag, inside every phase time). */
  fleetLoopDelayMs?: [number, number, number];
  /** CPU seconds of the fleet's main thread (the rest of fleetCpuSeconds: its download threads). */
  fleetMainCpuSeconds?: number;
  /** The fleet's context switches from power-on, all threads. */
  fleetContextSwitches?: { voluntary: number; involuntary: number };
  /** The fleet main thread's garbage collections: count and pause milliseconds, major and minor. */
  fleetGc?: GcStats;
  /** The same, summed over the fleet's download threads. */
  fleetDownloadsGc?: GcStats;
  /**
   * Milliseconds the server took over each script request (boot.ipxe and the per-MAC script),
   * from its own log: what the server adds, without the fleet's wait for a core of its own.
   */
  serverScriptMs?: number[];
  probe?: ProbeReport;
}

const SCRIPT_PATH = /^\/(machines\/[^/]+\/)?boot\.ipxe(\?|$)/;

/** netboot's JSON log: the `ms` of every answered script request (phase script, status 200). */
export function netbootScriptTimes(log: string): number[] {
  const out: number[] = [];
  for (const line of log.split('\n')) {
    if (!line.includes('"phase":"script"') || !line.includes('"ms":')) continue;
    try {
      const entry = JSON.parse(line) as { phase?: string; status?: number; ms?: number; url?: string };
      if (entry.phase === 'script' && entry.status === 200 && typeof entry.ms === 'number' && SCRIPT_PATH.test(entry.url ?? '')) out.push(entry.ms);
    } catch {
      // a torn last line
    }
  }
  return out;
}

/** nginx access log in the bench's `timed` format (`$request_uri $status $request_time`): script requests, ms. */
export function nginxScriptTimes(log: string): number[] {
  const out: number[] = [];
  for (const line of log.split('\n')) {
    const [uri, status, seconds] = line.trim().split(' ');
    if (uri && status === '200' && seconds !== undefined && SCRIPT_PATH.test(uri) && Number.isFinite(Number(seconds))) out.push(Number(seconds) * 1000);
  }
  return out;
}

/** Nearest-rank percentile (p in 0..100) of unsorted values; NaN for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function failedCount(run: StackRun): number {
  return run.machines.filter((m) => m.failed).length;
}

function upTimesMs(run: StackRun): number[] {
  return run.machines.filter((m) => !m.failed && m.upAtMs !== undefined).map((m) => m.upAtMs!);
}

/** Seconds until the last machine was up (every machine, failed ones excluded); NaN when none came up. */
export function allUpSeconds(run: StackRun): number {
  const ups = upTimesMs(run);
  return ups.length ? Math.max(...ups) / 1000 : NaN;
}

/** Seconds until half the machines were up (the median machine's boot, failed ones count as never up); NaN when fewer came up. */
export function halfUpSeconds(run: StackRun): number {
  const ups = upTimesMs(run).sort((a, b) => a - b);
  const half = Math.ceil(run.machines.length / 2);
  return ups.length >= half && half > 0 ? ups[half - 1]! / 1000 : NaN;
}

function ms(x: number): string {
  if (Number.isNaN(x)) return '-';
  return x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${x.toFixed(x < 10 ? 1 : 0)} ms`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

/** Per phase and stack: p50 / p99 over the machines that finished the phase. */
export function phaseTable(runs: readonly StackRun[]): string {
  const header = ['phase', ...runs.flatMap((r) => [`${r.stack} p50`, `${r.stack} p99`])];
  const rows = PHASES.map((phase) => [
    phase,
    ...runs.flatMap((r) => {
      const values = r.machines.map((m) => m.phases[phase]).filter((v): v is number => v !== undefined);
      return [ms(percentile(values, 50)), ms(percentile(values, 99))];
    }),
  ]);
  return table(header, rows);
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);

/** Per stack: failures (by phase), admission waits, retries, half- and all-up times, CPU, peak RSS. */
export function stackTable(runs: readonly StackRun[]): string {
  const rows = runs.map((r) => {
    const failures = new Map<string, number>();
    for (const m of r.machines) if (m.failed) failures.set(m.failed.phase, (failures.get(m.failed.phase) ?? 0) + 1);
    const waited = r.machines.filter((m) => m.waits > 0);
    const waitSeconds = r.machines.reduce((s, m) => s + m.waitMs, 0) / 1000;
    return [
      r.stack,
      String(r.machines.length),
      failures.size ? `${failedCount(r)} (${[...failures].map(([p, n]) => `${p} ${n}`).join(', ')})` : '0',
      `${waited.length} machines, ${r.machines.reduce((s, m) => s + m.waits, 0)} waits, ${waitSeconds.toFixed(1)} s`,
      String(r.machines.reduce((s, m) => s + m.retries, 0)),
      `${r.dhcpRetransmits} / ${r.tftpRetransmits}`,
      Number.isNaN(halfUpSeconds(r)) ? '-' : halfUpSeconds(r).toFixed(1),
      Number.isNaN(allUpSeconds(r)) ? '-' : allUpSeconds(r).toFixed(1),
      r.cpuSeconds.toFixed(1),
      mib(r.peakRssBytes),
      r.fleetCpuSeconds === undefined ? '-' : r.fleetCpuSeconds.toFixed(1),
      r.serverScriptMs?.length ? `${ms(percentile(r.serverScriptMs, 50))} / ${ms(percentile(r.serverScriptMs, 99))}` : '-',
    ];
  });
  return table(['stack', 'machines', 'failed', '503 waits (queued)', 'retries', 'DHCP / TFTP resends', 'half up s', 'all up s', 'server CPU s', 'peak RSS MiB', 'fleet CPU s', 'script in server p50 / p99'], rows);
}

/** The first error of each distinct kind, for the failures list. */
export function failureSamples(run: StackRun, limit = 5): string[] {
  const seen = new Map<string, string>();
  for (const m of run.machines) {
    if (!m.failed) continue;
    const kind = `${m.failed.phase}: ${m.failed.error.replace(/\d+(\.\d+){3}/g, 'IP').replace(/[0-9a-f]{2}(:[0-9a-f]{2}){5}/g, 'MAC')}`;
    if (!seen.has(kind)) seen.set(kind, `${m.mac} ${m.failed.phase}: ${m.failed.error}`);
  }
  return [...seen.values()].slice(0, limit);
}

/** The line scripts read: `storm: N machines, F failed, netboot X s vs peer Y s = R.RRx` (F: netboot's failures). */
/** The middle value (the mean of the two middle ones for an even count); NaN for none. */
export function median(values: readonly number[]): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * The line scripts read. With several rounds per stack: the median all-up time of each stack's
 * rounds, and every netboot failure of every round.
 */
export function finalLine(netboot: StackRun | readonly StackRun[], peer: StackRun | readonly StackRun[]): string {
  const rounds = (r: StackRun | readonly StackRun[]): readonly StackRun[] => ('machines' in r ? [r] : r);
  const nb = rounds(netboot);
  const pe = rounds(peer);
  const x = median(nb.map(allUpSeconds));
  const y = median(pe.map(allUpSeconds));
  const ratio = x / y;
  const f = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : 'NaN');
  const failed = nb.reduce((sum, r) => sum + failedCount(r), 0);
  return `storm: ${nb[0]!.machines.length} machines, ${failed} failed, netboot ${f(x)} s vs peer ${f(y)} s = ${Number.isFinite(ratio) ? ratio.toFixed(2) : 'NaN'}x`;
}

/**
 * With several rounds: each round's all-up time per stack, their medians, and each round's ratio
 * (how far one run alone can be trusted on shared cores).
 */
export function roundsLine(netboot: readonly StackRun[], peer: readonly StackRun[]): string {
  const times = (runs: readonly StackRun[]) => runs.map(allUpSeconds);
  const list = (values: number[]) => values.map((v) => (Number.isFinite(v) ? v.toFixed(1) : 'NaN')).join(' / ');
  const ratios = netboot.map((r, i) => (peer[i] ? allUpSeconds(r) / allUpSeconds(peer[i]!) : NaN));
  return `rounds: netboot ${list(times(netboot))} s (median ${median(times(netboot)).toFixed(1)}), peer ${list(times(peer))} s (median ${median(times(peer)).toFixed(1)}); ratio per round ${ratios.map((r) => (Number.isFinite(r) ? r.toFixed(2) : 'NaN')).join(' / ')}`;
}

/** The machines of several runs of one stack as one run (the per-phase table over every round). */
export function pooledRun(stack: string, runs: readonly StackRun[]): StackRun {
  return { ...runs[0]!, stack, machines: runs.flatMap((r) => r.machines) };
}

/** One line per stack: where the server's CPU went, by thread name (`name xN` when N threads share it). */
export function threadLines(runs: readonly StackRun[], limit = 6): string[] {
  return runs
    .filter((r) => r.threadCpu?.length)
    .map((r) => `${r.stack} CPU s by thread: ${r.threadCpu!.filter((t) => t.seconds > 0).slice(0, limit).map((t) => `${t.name}${t.threads > 1 ? ` x${t.threads}` : ''} ${t.seconds.toFixed(1)}`).join(', ')}`);
}

/**
 * Per stack: the root phase's window over the fleet (first machine entering it to the last
 * leaving it, seconds from power-on) and the mean rate over it, for roots of `rootBytes` each;
 * the aggregate rate is what decides the all-up time once many machines download at once.
 */
export function rootWindowLines(runs: readonly StackRun[], rootBytes: number): string[] {
  return runs.flatMap((r) => {
    const spans = r.machines
      .filter((m) => m.upAtMs !== undefined && m.phases.root !== undefined && m.phases.up !== undefined)
      .map((m) => ({ end: m.upAtMs! - m.phases.up!, start: m.upAtMs! - m.phases.up! - m.phases.root! }));
    if (spans.length === 0) return [];
    const first = Math.min(...spans.map((s) => s.start));
    const last = Math.max(...spans.map((s) => s.end));
    const mibPerS = (spans.length * rootBytes) / 2 ** 20 / ((last - first) / 1000);
    const bodies = r.machines.flatMap((m) => (m.rootBody ? [m.rootBody] : []));
    const bodyMs = bodies.map(([a, b]) => b - a);
    // Mean bodies in flight over the window: the summed body time over the window's length.
    const inFlight = bodyMs.reduce((a, b) => a + b, 0) / (last - first);
    const reads = r.machines.reduce((sum, m) => sum + (m.rootReads ?? 0), 0);
    const perRead = reads > 0 ? `, ${((bodies.length * rootBytes) / reads / 1024).toFixed(0)} KiB per fleet read` : '';
    const body = bodies.length ? `; root body alone p50 ${ms(percentile(bodyMs, 50))} / p99 ${ms(percentile(bodyMs, 99))}, ${inFlight.toFixed(1)} bodies in flight on average${perRead}` : '';
    return [`${r.stack} root window: ${(first / 1000).toFixed(1)} s to ${(last / 1000).toFixed(1)} s after power-on, ${spans.length} x ${mib(rootBytes)} MiB at ${mibPerS.toFixed(0)} MiB/s${body}`];
  });
}

/**
 * Per stack: the script probe's request times (boot.ipxe and the per-MAC script, from an idle
 * process on the fleet's segment), the end-to-end script latency a machine sees when its own
 * CPU is free, unlike the fleet's script phase (which includes the fleet's own backlog).
 */
export function probeLines(runs: readonly StackRun[]): string[] {
  return runs
    .filter((r) => r.probe)
    .map((r) => {
      const p = r.probe!;
      const stat = (values: number[]) => (values.length ? `p50 ${ms(percentile(values, 50))} / p99 ${ms(percentile(values, 99))} / max ${ms(Math.max(...values))}` : 'none');
      const failed = p.failures ? `, ${p.failures} failed (${p.errors.join('; ')})` : '';
      const slowest = p.entryMs.length && p.entryAtMs?.length === p.entryMs.length ? `; the slowest boot.ipxe was sent ${(p.entryAtMs[p.entryMs.indexOf(Math.max(...p.entryMs))]! / 1000).toFixed(1)} s after power-on` : '';
      const lag = p.serverLoopLagMs;
      const serverLag = lag?.max.length ? `; the server's main loop (its /metrics every ${SERVER_LAG_EVERY_MS / 1000} s, ${lag.max.length} readings): p99 up to ${ms(Math.max(...lag.p99))}, longest ${ms(Math.max(...lag.max))}` : '';
      return `${r.stack} script probe (one idle client during the storm): boot.ipxe ${stat(p.entryMs)}, per-MAC script ${stat(p.machineMs)}, ${p.entryMs.length + p.machineMs.length} requests${failed}${slowest}${serverLag}`;
    });
}

/** How often the probe reads netboot's main-loop lag from /metrics. */
export const SERVER_LAG_EVERY_MS = 2000;

/** netboot's `netboot_event_loop_lag_seconds` p99 and longest (quantile 1) in a /metrics text, in ms; null when it has none. */
export function loopLagFromMetrics(text: string): { p99: number; max: number } | null {
  const read = (quantile: string) => {
    const m = new RegExp(`^netboot_event_loop_lag_seconds\\{quantile="${quantile.replace('.', '\\.')}"\\} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) * 1000 : NaN;
  };
  const p99 = read('0.99');
  const max = read('1');
  return Number.isFinite(p99) && Number.isFinite(max) ? { p99, max } : null;
}

const thousands = (n: number) => (n >= 10_000 ? `${Math.round(n / 1000)}k` : String(n));

/** Per stack: the fleet's own event-loop delay, which every phase time above includes. */
export function fleetLagLines(runs: readonly StackRun[]): string[] {
  return runs
    .filter((r) => r.fleetLoopDelayMs)
    .map((r) => {
      const [p50, p99, max] = r.fleetLoopDelayMs!;
      const cpu = r.fleetMainCpuSeconds === undefined || r.fleetCpuSeconds === undefined ? '' : `; fleet CPU s: main thread ${r.fleetMainCpuSeconds.toFixed(1)}, download threads ${(r.fleetCpuSeconds - r.fleetMainCpuSeconds).toFixed(1)}`;
      const switches = r.fleetContextSwitches ? `; context switches: ${thousands(r.fleetContextSwitches.voluntary)} voluntary, ${thousands(r.fleetContextSwitches.involuntary)} involuntary` : '';
      const gcOf = (g: GcStats) => `${g.major} major (${g.majorMs} ms), ${g.minor} minor (${g.minorMs} ms)`;
      const gc = `${r.fleetGc ? `; main-thread GC: ${gcOf(r.fleetGc)}` : ''}${r.fleetDownloadsGc ? `; download threads' GC: ${gcOf(r.fleetDownloadsGc)}` : ''}`;
      return `${r.stack} fleet event-loop delay: p50 ${ms(p50)} / p99 ${ms(p99)} / max ${ms(max)} (the simulated machines' own lag: inside every phase time, and a resend when it outlasts a DHCP or TFTP timer)${cpu}${switches}${gc}`;
    });
}
