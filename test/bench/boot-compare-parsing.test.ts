import { describe, expect, it } from 'vitest';
import { httpBytesByPhase, nbdBytesRead } from '../../bench/lib/boot-bytes.ts';
import { parseSerialLog, secondsTo } from '../../bench/lib/serial-log.ts';

// The shape server/lab/vm.ts writes: a header, then every console line behind QEMU-relative seconds.
const LOG = [
  '# qemu-system-x86_64 -accel tcg -m 1024 -nographic',
  '[   0.18] iPXE (http://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+3EFCF160+3EF0F160 CA00',
  '[  12.65] Probing EDD (edd=off to disable)... o[    0.000000] Linux version 6.1.0-50-amd64',
  '[  17.36] [    4.572148] Run /init as init process',
  '[  19.88] [7.13] netboot: switch_root into /sbin/init',
  '[ 121.50] NETBOOT-E2E-UP hostname=a image=b root=overlay extra= addr=10.77.208.178/24',
  '[ 122.00] NETBOOT-E2E-UP hostname=a image=b root=overlay extra= addr=10.77.208.178/24',
  '',
].join('\n');

describe('serial log timestamps', () => {
  it("takes the VM's stamp, not the kernel's, and skips the header", () => {
    const lines = parseSerialLog(LOG);
    expect(lines).toHaveLength(6);
    expect(lines[0]).toEqual({ t: 0.18, text: 'iPXE (http://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM+3EFCF160+3EF0F160 CA00' });
    expect(lines[2]).toEqual({ t: 17.36, text: '[    4.572148] Run /init as init process' });
  });

  it('finds the first matching line, or null', () => {
    const lines = parseSerialLog(LOG.replace(/\n/g, '\r\n'));
    expect(secondsTo(lines, /Run \/init as init process/)).toBe(17.36);
    expect(secondsTo(lines, /netboot: switch_root into /)).toBe(19.88);
    expect(secondsTo(lines, /NETBOOT-E2E-UP /g)).toBe(121.5);
    expect(secondsTo(lines, /Welcome to Debian/)).toBeNull();
  });
});

describe('bytes of a boot', () => {
  it('sums the server-side HTTP downloads per phase, aborted ones included, init reports excluded', () => {
    const bytes = httpBytesByPhase([
      { phase: 'script', source: 'http' },
      { phase: 'kernel', source: 'http', bytes: 8_000_000 },
      { phase: 'initrd', source: 'http', bytes: 3_000_000 },
      { phase: 'layer', source: 'http', bytes: 10_240 },
      { phase: 'layer', source: 'init', bytes: 10_240 },
      { phase: 'rootfs', source: 'http', bytes: 65_536, detail: 'aborted after 65536 of 253755392 bytes' },
      { phase: 'rootfs', source: 'http', bytes: 253_755_392 },
      { phase: 'rootfs', source: 'nbd', bytes: 2_000_000 },
      { phase: 'rootfs', source: 'init' },
    ]);
    expect(bytes).toEqual({ kernel: 8_000_000, initrd: 3_000_000, layer: 10_240, rootfs: 253_820_928 });
  });

  it("reads one export's NBD byte counter from Prometheus text", () => {
    const metrics = [
      '# HELP netboot_nbd_bytes_total Bytes read over NBD',
      '# TYPE netboot_nbd_bytes_total counter',
      'netboot_nbd_bytes_total{export="aaaa"} 4096',
      'netboot_nbd_bytes_total{export="bbbb"} 2359296',
      'netboot_nbd_bytes_total_other{export="bbbb"} 1',
    ].join('\n');
    expect(nbdBytesRead(metrics, 'bbbb')).toBe(2_359_296);
    expect(nbdBytesRead(metrics, 'aaaa')).toBe(4096);
    expect(nbdBytesRead(metrics, 'cccc')).toBe(0);
  });
});
