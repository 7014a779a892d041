import { describe, expect, it } from 'vitest';
import { Metrics } from '../../server/events/metrics.ts';
import { Timeline } from '../../server/events/timeline.ts';

const MAC = '52:54:00:12:34:56';

describe('Timeline', () => {
  it('a full boot: dhcp, tftp, second dhcp, script, downloads, init events, up', () => {
    let clock = 1_000_000;
    const timeline = new Timeline({ now: () => clock });
    expect(timeline.state(MAC)).toBe('never');
    const steps: [Parameters<Timeline['record']>[1], Parameters<Timeline['record']>[2]][] = [
      ['dhcp', { source: 'dhcp', detail: 'DISCOVER arch 7' }],
      ['tftp', { source: 'tftp', bytes: 174_000, durationMs: 140 }],
      ['dhcp', { source: 'dhcp', detail: 'iPXE' }],
      ['script', { source: 'http', imageId: 'abc' }],
      ['kernel', { source: 'http', bytes: 8_000_000, durationMs: 900 }],
      ['initrd', { source: 'http', bytes: 5_000_000, durationMs: 600 }],
      ['init', { source: 'init', t: 7.5 }],
      ['net', { source: 'init', t: 8.25 }],
      ['layer', { source: 'init', t: 8.5 }],
      ['rootfs', { source: 'init', t: 10, bytes: 26_000_000 }],
      ['switch_root', { source: 'init', t: 10.5 }],
    ];
    for (const [phase, options] of steps) {
      clock += 100;
      timeline.record(MAC, phase, options);
      expect(timeline.state(MAC)).toBe('booting');
    }
    timeline.record(MAC, 'up', { source: 'init', t: 12 });
    const boots = timeline.boots(MAC);
    expect(boots).toHaveLength(1);
    expect(boots[0]!.state).toBe('up');
    expect(boots[0]!.imageId).toBe('abc');
    expect(boots[0]!.phases.map((p) => p.phase)).toEqual(['dhcp', 'tftp', 'dhcp', 'script', 'kernel', 'initrd', 'init', 'net', 'layer', 'rootfs', 'switch_root', 'up']);
    // init phases: duration = time since the previous init event on the machine's clock
    expect(boots[0]!.phases.find((p) => p.phase === 'net')!.durationMs).toBe(750);
    expect(boots[0]!.phases.find((p) => p.phase === 'init')!.durationMs).toBeUndefined();
    expect(boots[0]!.phases[0]!.at).toBe(new Date(1_000_100).toISOString());
  });

  it('a reboot starts a new boot at dhcp or script; a failure marks the boot failed', () => {
    const timeline = new Timeline({ keepBoots: 2 });
    const first = timeline.record(MAC, 'script', { source: 'http' });
    timeline.record(MAC, 'kernel', { source: 'http' });
    timeline.record(MAC, 'failed', { source: 'init', t: 9, detail: 'no rootfs' });
    expect(timeline.state(MAC)).toBe('failed');
    const second = timeline.record(MAC, 'dhcp', { source: 'dhcp' });
    expect(second.id).not.toBe(first.id);
    expect(timeline.state(MAC)).toBe('booting');
    expect(timeline.record(MAC, 'script', { source: 'http' }).id).toBe(second.id);
    // the "not built yet" loop fetches the script again and again: still the same boot
    expect(timeline.record(MAC, 'script', { source: 'http' }).id).toBe(second.id);
    timeline.record(MAC, 'kernel', { source: 'http' });
    const third = timeline.record(MAC, 'script', { source: 'http' });
    expect(third.id).not.toBe(second.id);
    expect(timeline.boots(MAC).map((b) => b.id)).toEqual([second.id, third.id]);
  });

  it('feeds boot and phase metrics', async () => {
    const metrics = new Metrics();
    const timeline = new Timeline({ metrics });
    timeline.record(MAC, 'script', { source: 'http' });
    timeline.record(MAC, 'kernel', { source: 'http', durationMs: 2000 });
    timeline.record(MAC, 'up', { source: 'init', t: 1 });
    const text = await metrics.text();
    expect(text).toContain('netboot_boots_total{outcome="started"} 1');
    expect(text).toContain('netboot_boots_total{outcome="up"} 1');
    expect(text).toContain('netboot_boot_phases_total{phase="kernel",source="http"} 1');
    expect(text).toContain('netboot_phase_duration_seconds_sum{phase="kernel"} 2');
  });

  it('remembers a bounded number of MACs', () => {
    const timeline = new Timeline({ maxUnknownMachines: 3 });
    for (let i = 0; i < 5; i++) timeline.record(`52:54:00:00:00:0${i}`, 'dhcp', { source: 'dhcp' });
    expect(timeline.macs()).toEqual(['52:54:00:00:00:02', '52:54:00:00:00:03', '52:54:00:00:00:04']);
  });
});
