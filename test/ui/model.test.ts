import { describe, expect, it } from 'vitest';
import { Timeline } from '../../server/events/timeline.ts';
import { parseConfig } from '../../server/config/load.ts';
import { failureOf, fleetRow, inbox, waterfall } from '../../server/http/ui/model.ts';

const MAC = '52:54:00:60:20:01';
const OTHER = '52:54:00:60:20:02';
const config = parseConfig(`images:\n  demo:\n    source: docker:x/y:1\nmachines:\n  ${MAC}:\n    hostname: m1\ndefaults:\n  image: demo\n`, '/nonexistent/netboot.yaml');

function clocked() {
  const clock = { now: Date.parse('2026-11-30T12:00:00Z') };
  const timeline = new Timeline({ now: () => clock.now, isConfigured: (mac) => config.machines.has(mac) });
  return { clock, timeline };
}

describe('timeline.subscribe', () => {
  it('tells every listener about every record until it unsubscribes; a throwing listener changes nothing', () => {
    const { timeline } = clocked();
    const seen: string[] = [];
    timeline.subscribe(() => {
      throw new Error('broken listener');
    });
    const stop = timeline.subscribe((mac, boot) => seen.push(`${mac} ${boot.phases.at(-1)!.phase}`));
    timeline.record(MAC, 'script', { source: 'http' });
    timeline.record(MAC, 'kernel', { source: 'http' });
    stop();
    timeline.record(MAC, 'initrd', { source: 'http' });
    expect(seen).toEqual([`${MAC} script`, `${MAC} kernel`]);
    expect(timeline.current(MAC)!.phases).toHaveLength(3);
  });
});

describe('fleet rows', () => {
  const ids = new Map([['demo', 'newid']]);
  const options = (now: number) => ({ stuckAfterMs: 60_000, now });

  it('never → booting with its phase → stuck after a quiet minute → up on an old id → failed with its step', () => {
    const { clock, timeline } = clocked();
    expect(fleetRow(config, timeline, ids, MAC, options(clock.now))).toMatchObject({ state: 'never', attention: null, imageId: 'newid', lastSeen: null });
    timeline.record(MAC, 'script', { source: 'http', imageId: 'oldid' });
    clock.now += 1000;
    timeline.record(MAC, 'kernel', { source: 'http', bytes: 10, durationMs: 800 });
    expect(fleetRow(config, timeline, ids, MAC, options(clock.now))).toMatchObject({ state: 'booting', phase: 'kernel', attention: null, imageId: 'oldid' });
    expect(fleetRow(config, timeline, ids, MAC, options(clock.now + 61_000)).attention).toBe('stuck in kernel');
    clock.now += 4000;
    timeline.record(MAC, 'up', { source: 'init', t: 9 });
    expect(fleetRow(config, timeline, ids, MAC, options(clock.now))).toMatchObject({ state: 'up', durationMs: 5000, attention: 'runs an older image id' });
    timeline.record(MAC, 'script', { source: 'http', imageId: 'newid' });
    timeline.record(MAC, 'init', { source: 'init', t: 2 });
    timeline.record(MAC, 'failed', { source: 'init', t: 3, detail: 'layer: signature refused' });
    expect(fleetRow(config, timeline, ids, MAC, options(clock.now))).toMatchObject({ state: 'failed', attention: 'failed at layer', failure: { step: 'layer', detail: 'layer: signature refused' } });
  });

  it('a failure without a named step blames the last step /init reported', () => {
    const { timeline } = clocked();
    timeline.record(MAC, 'script', { source: 'http' });
    timeline.record(MAC, 'net', { source: 'init', t: 1 });
    const boot = timeline.record(MAC, 'failed', { source: 'init', t: 2, detail: 'no address' });
    expect(failureOf(boot)).toEqual({ step: 'net', detail: 'no address' });
  });
});

describe('waterfall', () => {
  it('puts each record on the boot axis: its duration before the moment the server saw it; instants are thin', () => {
    const { clock, timeline } = clocked();
    timeline.record(MAC, 'script', { source: 'http' });
    clock.now += 2000;
    timeline.record(MAC, 'kernel', { source: 'http', durationMs: 1000 });
    clock.now += 2000;
    const boot = timeline.record(MAC, 'rootfs', { source: 'http', durationMs: 9000 });
    const { bars, totalMs } = waterfall(boot);
    expect(totalMs).toBe(4000);
    expect(bars.map((b) => [b.record.phase, b.startMs, b.endMs, Math.round(b.left), Math.round(b.width * 10) / 10])).toEqual([
      ['script', 0, 0, 0, 0.4],
      ['kernel', 1000, 2000, 25, 25],
      ['rootfs', 0, 4000, 0, 100],
    ]);
  });
});

describe('inbox', () => {
  it('lists only unknown MACs that booted, newest first, with the address DHCP offered', () => {
    const { clock, timeline } = clocked();
    timeline.record(MAC, 'dhcp', { source: 'dhcp', detail: 'DISCOVER -> OFFER 10.88.60.5 undionly.kpxe' });
    timeline.record(OTHER, 'dhcp', { source: 'dhcp', detail: 'DISCOVER -> OFFER 10.88.60.7 ipxe.efi' });
    clock.now += 1000;
    timeline.record(OTHER, 'script', { source: 'http', detail: 'unknown MAC, policy menu' });
    timeline.security(MAC, { kind: 'identity', detail: 'x' });
    const entries = inbox(config, timeline, (mac) => (mac === OTHER ? { ageMs: 1000, info: { arch: 7, vendorClass: 'PXEClient:Arch:00007:UNDI:003016' } } : {}));
    expect(entries).toEqual([
      {
        mac: OTHER,
        firstSeen: '2026-11-30T12:00:00.000Z',
        lastSeen: '2026-11-30T12:00:01.000Z',
        address: '10.88.60.7',
        seen: ['dhcp: DISCOVER -> OFFER 10.88.60.7 ipxe.efi', 'script: unknown MAC, policy menu'],
        arch: 'x86-64 UEFI',
        vendorClass: 'PXEClient:Arch:00007:UNDI:003016',
        dhcpAgeMs: 1000,
      },
    ]);
  });
});
