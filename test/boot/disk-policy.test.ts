import { describe, expect, it } from 'vitest';
import { diskKernelArgs, diskPolicy } from '../../server/boot/disk-policy.ts';
import { parseConfig } from '../../server/config/load.ts';
import { kernelArgs } from '../../server/http/ipxe.ts';
import { Metrics } from '../../server/events/metrics.ts';

const yaml = `
images:
  lab:
    source: docker:lab:1
    disk: { keep: [/home, /var/lib/docker], cacheMiB: 4096 }
  plain:
    source: docker:plain:1
machines:
  52:54:00:00:00:01: { image: lab, disk: { init: true } }
  52:54:00:00:00:02: { image: lab, disk: { cache: false, device: /dev/nvme0n1, label: scratch } }
  52:54:00:00:00:03: { image: lab }
  52:54:00:00:00:04: { image: plain }
  52:54:00:00:00:05: { image: plain, disk: { init: true } }
`;

describe('disk policy: the image says what its machines do with a disk, a machine overrides', () => {
  const config = parseConfig(yaml, '/virtual/netboot.yaml');
  const policyOf = (mac: string) => {
    const machine = config.machines.get(mac)!;
    return diskPolicy(config.images.get(machine.image)!, machine);
  };

  it('merges field by field; init only from the machine; no disk config = diskless', () => {
    expect(policyOf('52:54:00:00:00:01')).toEqual({ cacheMiB: 4096, keep: ['/home', '/var/lib/docker'], label: 'netboot', init: true });
    expect(policyOf('52:54:00:00:00:02')).toEqual({ cacheMiB: null, keep: ['/home', '/var/lib/docker'], label: 'scratch', device: '/dev/nvme0n1', init: false });
    expect(policyOf('52:54:00:00:00:03')).toMatchObject({ init: false, cacheMiB: 4096 });
    expect(policyOf('52:54:00:00:00:04')).toBeNull();
    expect(policyOf('52:54:00:00:00:05')).toEqual({ cacheMiB: 8192, keep: [], label: 'netboot', init: true });
  });

  it('becomes netboot.disk* kernel arguments in the machine script', () => {
    expect(diskKernelArgs(policyOf('52:54:00:00:00:01'))).toEqual(['netboot.disk=netboot', 'netboot.disk.cache=4096', 'netboot.disk.keep=/home,/var/lib/docker', 'netboot.disk.init']);
    expect(diskKernelArgs(policyOf('52:54:00:00:00:02'))).toEqual(['netboot.disk=scratch', 'netboot.disk.keep=/home,/var/lib/docker', 'netboot.disk.device=/dev/nvme0n1']);
    expect(diskKernelArgs(null)).toEqual([]);
    const machine = config.machines.get('52:54:00:00:00:01')!;
    const args = kernelArgs({
      server: 'http://10.0.0.1:8080',
      machine,
      image: config.images.get('lab')!,
      imageId: '0123456789abcdef',
      layerUrl: 'http://10.0.0.1:8080/machines/52-54-00-00-00-01/layer?sig=x',
      eventToken: 'aa.bb',
      rebootDelay: 30,
      nbd: '10.0.0.1:10809',
    });
    expect(args).toContain(' netboot.reboot=30 netboot.disk=netboot netboot.disk.cache=4096 netboot.disk.keep=/home,/var/lib/docker netboot.disk.init');
    const plain = kernelArgs({ server: 'http://s', machine: config.machines.get('52:54:00:00:00:04')!, image: config.images.get('plain')!, imageId: '0123456789abcdef', layerUrl: 'u', eventToken: 't', rebootDelay: 1, nbd: 'n' });
    expect(plain).not.toContain('netboot.disk');
  });

  it('refuses init on an image, kept paths outside the image, and bad labels or devices, each with the fix', () => {
    const problems = (disk: string, where: 'image' | 'machine' = 'image') => {
      const text =
        where === 'image'
          ? `images:\n  lab:\n    source: docker:lab:1\n    disk: ${disk}\n`
          : `images:\n  lab:\n    source: docker:lab:1\nmachines:\n  52:54:00:00:00:01: { image: lab, disk: ${disk} }\n`;
      try {
        parseConfig(text, '/virtual/netboot.yaml');
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error(`accepted: ${disk}`);
    };
    expect(problems('{ init: true }')).toMatch(/images\.lab\.disk\.init: disk\.init is set per machine \(machines\.<mac>\.disk\.init: true\)/);
    expect(problems('{ keep: [/proc/x] }')).toMatch(/cannot keep \/proc, \/sys, \/dev, \/run or \/tmp/);
    expect(problems('{ keep: [home] }')).toMatch(/expected an absolute path like \/home/);
    expect(problems('{ keep: [/home/../etc] }')).toMatch(/must not contain \. or \.\. components/);
    expect(problems('{ keep: ["/a b"] }', 'machine')).toMatch(/no spaces or commas/);
    expect(problems('{ label: "way-too-long-label-x" }')).toMatch(/up to 16 letters/);
    expect(problems('{ device: /dev/sda1; }', 'machine')).toMatch(/expected a whole disk like \/dev\/sda/);
    expect(problems('{ cacheMiB: 10 }')).toMatch(/cacheMiB/);
  });

  it('counts /init disk events by outcome in /metrics, and the bytes a cache hit saved', async () => {
    const metrics = new Metrics();
    metrics.diskEvent('cache_hit: 0123, 1000 bytes read from disk instead of the network', 1000);
    metrics.diskEvent('cache_miss: 0123, 1000 bytes downloaded', 1000);
    metrics.diskEvent('untouched: /dev/vda holds data');
    metrics.diskEvent('made-up thing');
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/netboot_disk_events_total\{outcome="cache_hit"\} 1/);
    expect(text).toMatch(/netboot_disk_events_total\{outcome="cache_miss"\} 1/);
    expect(text).toMatch(/netboot_disk_events_total\{outcome="untouched"\} 1/);
    expect(text).toMatch(/netboot_disk_events_total\{outcome="other"\} 1/);
    expect(text).toMatch(/netboot_disk_cache_saved_bytes_total 1000/);
  });
});
