import { copyFile, chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSegment, type Segment } from '../lab/netns.ts';
import type { TransferEvent } from '../../server/tftp/server.ts';

const childScript = join(import.meta.dirname, 'serve-child.ts');

/**
 * Real UEFI PXE firmware (OVMF, its NIC ROM disabled) downloads snponly.efi from our TFTP
 * server inside a private namespace; dnsmasq (DHCP only, no DNS, no TFTP) plays the lab's DHCP
 * server naming the boot file. The firmware first asks for the file size and aborts that
 * request with ERROR 8: it must come out as a `probe`, followed by a complete download.
 */
describe('UEFI firmware (OVMF) fetches snponly.efi over our TFTP', () => {
  let segment: Segment | undefined;
  let dir: string;
  const transfers: TransferEvent[] = [];
  let serial = '';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tftp-uefi-'));
    await chmod(dir, 0o755);
    await copyFile('/usr/lib/ipxe/snponly.efi', join(dir, 'snponly.efi'));
    await copyFile('/usr/share/OVMF/OVMF_VARS_4M.fd', join(dir, 'vars.fd'));
    segment = await createSegment();
    const s = segment;
    const server = s.spawn('node', ['--import', 'tsx', childScript, dir, s.serverIp, '69', '1000'], { cwd: process.cwd() });
    await new Promise<void>((resolve, reject) => {
      server.once('exit', (code) => reject(new Error(`tftp child exited with ${code}`)));
      createInterface({ input: server.stdout! }).on('line', (line) => {
        const msg = JSON.parse(line) as { ready?: unknown; transfer?: TransferEvent };
        if (msg.transfer) transfers.push(msg.transfer);
        if (msg.ready) resolve();
      });
    });
    s.spawn('dnsmasq', [
      '--no-daemon',
      '--port=0',
      '--interface=br0',
      '--bind-interfaces',
      '--leasefile-ro',
      `--dhcp-range=${s.subnet}.50,${s.subnet}.150,1h`,
      `--dhcp-boot=snponly.efi,,${s.serverIp}`,
    ]);
    const tap = await s.addTap();
    const qemu = s.spawn('qemu-system-x86_64', [
      '-accel', 'tcg', '-m', '512', '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
      '-drive', 'if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd',
      '-drive', `if=pflash,format=raw,file=${join(dir, 'vars.fd')}`,
      '-fw_cfg', 'name=opt/org.tianocore/IPv6PXESupport,string=n',
      '-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`,
      '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile=,bootindex=1',
    ]);
    qemu.stdout?.on('data', (d: Buffer) => (serial += d.toString('latin1')));
  }, 60_000);

  afterAll(async () => {
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('sees the tsize probe end normally, then a complete download', async () => {
    const deadline = Date.now() + 150_000;
    while (Date.now() < deadline && !transfers.some((t) => t.outcome === 'complete')) await new Promise((r) => setTimeout(r, 500));
    const summary = transfers.map((t) => `${t.path}:${t.outcome}`);
    expect(summary, `serial tail: ${serial.slice(-1500)}`).toContain('snponly.efi:complete');
    expect(summary.indexOf('snponly.efi:probe')).toBeGreaterThanOrEqual(0);
    expect(summary.indexOf('snponly.efi:probe')).toBeLessThan(summary.indexOf('snponly.efi:complete'));
    expect(transfers.filter((t) => t.outcome !== 'probe' && t.outcome !== 'complete')).toEqual([]);
    expect(transfers.find((t) => t.outcome === 'complete')?.bytes).toBeGreaterThan(100_000);
  }, 180_000);
});
