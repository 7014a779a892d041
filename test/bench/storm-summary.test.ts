import { describe, expect, it } from 'vitest';
import { scriptCommand } from '../../bench/lib/storm-client.ts';
import { threadCpuByName } from '../../bench/lib/storm-procs.ts';
import { allUpSeconds, failureSamples, halfUpSeconds, finalLine, fleetLagLines, loopLagFromMetrics, median, netbootScriptTimes, nginxScriptTimes, percentile, phaseTable, pooledRun, probeLines, rootWindowLines, roundsLine, stackTable, threadLines, type MachineResult, type StackRun } from '../../bench/lib/storm-summary.ts';

function machine(mac: string, upAtMs: number | null, extra: Partial<MachineResult> = {}): MachineResult {
  return {
    mac,
    phases: upAtMs === null ? { 'dhcp-pxe': 40 } : { 'dhcp-pxe': 40, script: upAtMs / 10, root: upAtMs / 2 },
    waits: 0,
    waitMs: 0,
    retries: 0,
    ...(upAtMs === null ? { failed: { phase: 'tftp', error: 'TFTP snponly.efi: ERROR 0 Server busy from 10.88.21.7' } } : { upAtMs }),
    ...extra,
  };
}

function stack(name: string, machines: MachineResult[]): StackRun {
  return { stack: name, machines, cpuSeconds: 12.34, peakRssBytes: 150 * 2 ** 20, dhcpRetransmits: 2, tftpRetransmits: 1 };
}

describe('bench/storm summary', () => {
  it('takes nearest-rank percentiles', () => {
    const values = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted
    expect(percentile(values, 50)).toBe(50);
    expect(percentile(values, 99)).toBe(99);
    expect(percentile(values, 100)).toBe(100);
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([], 50)).toBeNaN();
  });

  it('times the storm by its last machine up and ends with the line scripts read', () => {
    const netboot = stack('netboot', [machine('52:54:00:88:00:01', 10_000), machine('52:54:00:88:00:02', 42_500), machine('52:54:00:88:00:03', null)]);
    const peer = stack('peer', [machine('52:54:00:88:00:01', 20_000), machine('52:54:00:88:00:02', 50_000), machine('52:54:00:88:00:03', 30_000)]);
    expect(allUpSeconds(netboot)).toBe(42.5);
    expect(finalLine(netboot, peer)).toBe('storm: 3 machines, 1 failed, netboot 42.5 s vs peer 50.0 s = 0.85x');
    expect(finalLine(netboot, peer)).toMatch(/^storm: \d+ machines, \d+ failed, netboot [\d.]+ s vs peer [\d.]+ s = \d+\.\d\dx$/);
  });

  it('compares the median of several rounds per stack, and counts every netboot failure of every round', () => {
    const run = (name: string, ...ups: (number | null)[]) => stack(name, ups.map((up, i) => machine(`52:54:00:88:00:0${i + 1}`, up)));
    const netboot = [run('netboot 1', 23_500, 20_000), run('netboot 2', 26_400, null), run('netboot 3', 24_800, 1000)];
    const peer = [run('peer 1', 22_100, 1000), run('peer 2', 30_000, 1000), run('peer 3', 23_800, 1000)];
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([NaN, 5])).toBe(5);
    expect(median([])).toBeNaN();
    expect(finalLine(netboot, peer)).toBe('storm: 2 machines, 1 failed, netboot 24.8 s vs peer 23.8 s = 1.04x');
    expect(roundsLine(netboot, peer)).toBe('rounds: netboot 23.5 / 26.4 / 24.8 s (median 24.8), peer 22.1 / 30.0 / 23.8 s (median 23.8); ratio per round 1.06 / 0.88 / 1.04');
    const pooled = pooledRun('netboot', netboot);
    expect(pooled.stack).toBe('netboot');
    expect(pooled.machines).toHaveLength(6);
    expect(phaseTable([pooled])).toMatch(/^\| phase +\| netboot p50 \| netboot p99 \|/);
  });

  it('says NaN rather than inventing a time when a stack got no machine up', () => {
    const none = stack('peer', [machine('52:54:00:88:00:01', null)]);
    expect(finalLine(stack('netboot', [machine('52:54:00:88:00:01', 1000)]), none)).toBe('storm: 1 machines, 0 failed, netboot 1.0 s vs peer NaN s = NaNx');
  });

  it('tables phases, failures by phase, and 503 waits apart from failures', () => {
    const waited = machine('52:54:00:88:00:04', 30_000, { waits: 3, waitMs: 4500 });
    const run = stack('netboot', [machine('52:54:00:88:00:01', 10_000), machine('52:54:00:88:00:03', null), waited]);
    const phases = phaseTable([run]);
    expect(phases).toContain('| dhcp-pxe  | 40 ms       | 40 ms       |');
    expect(phases).toContain('| root      | 5000 ms     | 15.0 s      |');
    expect(phases).toContain('| tftp      | -           | -           |');
    const stacks = stackTable([run]);
    expect(stacks).toContain('| 1 (tftp 1) |');
    // Half up: the second of three machines (the failed one never came up); all up: the last.
    expect(stacks).toMatch(/\| 2 \/ 1 +\| 30\.0 +\| 30\.0 +\|/);
    expect(halfUpSeconds(stack('x', [machine('a', 1000), machine('b', 5000), machine('c', 2000), machine('d', 9000)]))).toBe(2);
    expect(halfUpSeconds(stack('x', [machine('a', 1000), machine('b', null), machine('c', null)]))).toBeNaN();
    expect(stacks).toContain('| 1 machines, 3 waits, 4.5 s |');
    expect(stacks).toContain('| 12.3 ');
    expect(stacks).toContain('| 150 ');
  });

  it("gives the script probe's request times per stack, and its failures, only for runs that had a probe", () => {
    const entryMs = Array.from({ length: 100 }, (_, i) => i + 1);
    const probed = { ...stack('netboot', []), probe: { entryMs, machineMs: [3, 5, 250], entryAtMs: entryMs.map((_, i) => i * 50), failures: 0, errors: [] } };
    const failing = { ...stack('peer', []), probe: { entryMs: [], machineMs: [], failures: 2, errors: ['GET http://x/boot.ipxe: HTTP 500 (1 tries)'] } };
    expect(probeLines([probed, stack('other', []), failing])).toEqual([
      'netboot script probe (one idle client during the storm): boot.ipxe p50 50 ms / p99 99 ms / max 100 ms, per-MAC script p50 5.0 ms / p99 250 ms / max 250 ms, 103 requests; the slowest boot.ipxe was sent 5.0 s after power-on',
      'peer script probe (one idle client during the storm): boot.ipxe none, per-MAC script none, 0 requests, 2 failed (GET http://x/boot.ipxe: HTTP 500 (1 tries))',
    ]);
  });

  it("reads netboot's main-loop lag from its /metrics, and prints the worst of the probe's readings", () => {
    const metrics = [
      '# HELP netboot_event_loop_lag_seconds Lateness of the main event loop since the last scrape',
      '# TYPE netboot_event_loop_lag_seconds gauge',
      'netboot_event_loop_lag_seconds{quantile="0.5"} 0.0004',
      'netboot_event_loop_lag_seconds{quantile="0.99"} 0.0412',
      'netboot_event_loop_lag_seconds{quantile="1"} 0.083',
      '',
    ].join('\n');
    const lag = loopLagFromMetrics(metrics)!;
    expect(lag.p99).toBeCloseTo(41.2, 9);
    expect(lag.max).toBeCloseTo(83, 9);
    expect(loopLagFromMetrics('<html>404 Not Found</html>')).toBeNull();
    expect(loopLagFromMetrics('netboot_event_loop_lag_seconds{quantile="0.5"} 0.1\n')).toBeNull();
    const probe = { entryMs: [2], machineMs: [3], failures: 0, errors: [], serverLoopLagMs: { p99: [12, 41.2, 7], max: [20, 83, 9] } };
    expect(probeLines([{ ...stack('netboot', []), probe }])).toEqual([
      "netboot script probe (one idle client during the storm): boot.ipxe p50 2.0 ms / p99 2.0 ms / max 2.0 ms, per-MAC script p50 3.0 ms / p99 3.0 ms / max 3.0 ms, 2 requests; the server's main loop (its /metrics every 2 s, 3 readings): p99 up to 41 ms, longest 83 ms",
    ]);
  });

  it("gives the fleet's own event-loop delay per stack that reported it", () => {
    const lagging = { ...stack('netboot', []), fleetLoopDelayMs: [10.5, 850, 1234] as [number, number, number] };
    const split = { ...stack('peer', []), fleetLoopDelayMs: [10, 20, 30] as [number, number, number], fleetCpuSeconds: 31.5, fleetMainCpuSeconds: 2.5, fleetContextSwitches: { voluntary: 481_234, involuntary: 9_876 }, fleetGc: { major: 3, majorMs: 41, minor: 120, minorMs: 230 }, fleetDownloadsGc: { major: 0, majorMs: 0, minor: 900, minorMs: 1200 } };
    expect(fleetLagLines([lagging, stack('other', []), split])).toEqual([
      "netboot fleet event-loop delay: p50 11 ms / p99 850 ms / max 1234 ms (the simulated machines' own lag: inside every phase time, and a resend when it outlasts a DHCP or TFTP timer)",
      "peer fleet event-loop delay: p50 10 ms / p99 20 ms / max 30 ms (the simulated machines' own lag: inside every phase time, and a resend when it outlasts a DHCP or TFTP timer); fleet CPU s: main thread 2.5, download threads 29.0; context switches: 481k voluntary, 9876 involuntary; main-thread GC: 3 major (41 ms), 120 minor (230 ms); download threads' GC: 0 major (0 ms), 900 minor (1200 ms)",
    ]);
  });

  it('lists one failure per kind, whatever the address or MAC', () => {
    const run = stack('netboot', [machine('52:54:00:88:00:01', null), machine('52:54:00:88:00:02', null, {})]);
    run.machines[1]!.failed = { phase: 'tftp', error: 'TFTP snponly.efi: ERROR 0 Server busy from 10.88.21.9' };
    expect(failureSamples(run)).toEqual(['52:54:00:88:00:01 tftp: TFTP snponly.efi: ERROR 0 Server busy from 10.88.21.7']);
  });

  it('reads the URLs and arguments a machine follows out of iPXE scripts', () => {
    expect(scriptCommand('#!ipxe\nchain --replace http://s:8080/machines/${mac:hexhyp}/boot.ipxe || goto failed\n', 'chain')).toEqual({
      url: 'http://s:8080/machines/${mac:hexhyp}/boot.ipxe',
      args: [],
    });
    const script = ':kernel\nkernel --name vmlinuz http://s/images/x/vmlinuz?mac=a initrd=initrd.img netboot.token=t console=ttyS0 || goto kernel_retry1\ninitrd --name initrd.img http://s/images/x/initrd.img || goto r\n';
    expect(scriptCommand(script, 'kernel')).toEqual({ url: 'http://s/images/x/vmlinuz?mac=a', args: ['initrd=initrd.img', 'netboot.token=t', 'console=ttyS0'] });
    expect(scriptCommand(script, 'initrd')?.url).toBe('http://s/images/x/initrd.img');
    expect(scriptCommand('#!ipxe\necho no kernel here\n', 'kernel')).toBeNull();
  });

  it('reads the server-side script times from netboot\'s JSON log and nginx\'s timed access log (only answered script requests)', () => {
    const netbootLog = [
      '{"level":30,"phase":"script","method":"GET","url":"/boot.ipxe","status":200,"ms":3,"msg":"http"}',
      '{"level":30,"phase":"script","method":"GET","url":"/machines/52-54-00-88-00-01/boot.ipxe","status":200,"ms":41,"msg":"http"}',
      '{"level":40,"phase":"script","method":"GET","url":"/machines/52-54-00-88-00-02/boot.ipxe","status":403,"ms":2,"msg":"http"}',
      '{"level":30,"phase":"script","detail":"no ms here"}',
      '{"level":30,"phase":"rootfs","url":"/images/x/rootfs.squashfs","status":200,"ms":9000,"msg":"http"}',
      '{"level":30,"phase":"script","url":"/boot.ipxe","status":200,"ms":',
    ].join('\n');
    expect(netbootScriptTimes(netbootLog)).toEqual([3, 41]);
    const nginxLog = ['/boot.ipxe 200 0.001', '/machines/52-54-00-88-00-01/boot.ipxe 200 0.120', '/machines/52-54-00-88-00-01/layer.tar 200 0.002', '/boot.ipxe 404 0.000', ''].join('\n');
    expect(nginxScriptTimes(nginxLog)).toEqual([1, 120]);
    const run = { ...stack('netboot', [machine('a', 1000)]), serverScriptMs: [3, 41] };
    expect(stackTable([run])).toMatch(/\| 3\.0 ms \/ 41 ms +\|/);
  });

  it('gives the root window, its aggregate rate, and the root bodies apart from queue waits', () => {
    // Root phases (upAtMs / 2 long, then 'up' 100 ms): 5 s..9.9 s and 10 s..19.9 s; bodies 8..9.9 s and 12..19.9 s.
    const withUp = (m: MachineResult): MachineResult => ({ ...m, phases: { ...m.phases, up: 100 } });
    const netboot = stack('netboot', [
      withUp(machine('52:54:00:88:00:01', 10_000, { rootBody: [8_000, 9_900], rootReads: 480 })),
      withUp(machine('52:54:00:88:00:02', 20_000, { rootBody: [12_000, 19_900], rootReads: 480 })),
      machine('52:54:00:88:00:03', null),
    ]);
    expect(rootWindowLines([netboot], 30 * 2 ** 20)).toEqual([
      'netboot root window: 4.9 s to 19.9 s after power-on, 2 x 30 MiB at 4 MiB/s; root body alone p50 1900 ms / p99 7900 ms, 0.7 bodies in flight on average, 64 KiB per fleet read',
    ]);
    expect(rootWindowLines([stack('peer', [machine('52:54:00:88:00:01', null)])], 1)).toEqual([]);
  });

  it('sums server CPU by thread name, threads started during the storm counted from zero', () => {
    const before = new Map([['10/10', { name: 'node', seconds: 5 }], ['10/11', { name: 'nb-sendfile-0', seconds: 1 }]]);
    const after = new Map([
      ['10/10', { name: 'node', seconds: 25 }],
      ['10/11', { name: 'nb-sendfile-0', seconds: 4 }],
      ['10/12', { name: 'nb-sendfile-1', seconds: 2.5 }],
      ['20/20', { name: 'nginx', seconds: 0.5 }],
      ['21/21', { name: 'nginx', seconds: 0.25 }],
    ]);
    const byName = threadCpuByName(before, after);
    expect(byName).toEqual([
      { name: 'node', seconds: 20, threads: 1 },
      { name: 'nb-sendfile-0', seconds: 3, threads: 1 },
      { name: 'nb-sendfile-1', seconds: 2.5, threads: 1 },
      { name: 'nginx', seconds: 0.75, threads: 2 },
    ]);
    expect(threadLines([{ ...stack('netboot', []), threadCpu: byName }], 3)).toEqual(['netboot CPU s by thread: node 20.0, nb-sendfile-0 3.0, nb-sendfile-1 2.5']);
  });
});
