import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../server/config/types.ts';
import { writeInitrd } from '../../server/initramfs/index.ts';
import { debianKernelFixture, type KernelFixture } from './fixture.ts';
import { createBootLab, phasesOf, type BootLab } from './lab.ts';
import { testLayerTar } from './layer.ts';

/**
 * The image's own init this time: systemd reaches multi-user, and the unit the initramfs
 * dropped into the overlay reports `up` with busybox handed over in /run/netboot.
 */
const IMAGE: Image = {
  name: 'debian-systemd',
  source: 'docker:netboot-test/debian',
  cmdline: '',
  root: 'ram',
  initramfs: 'netboot',
  init: '/sbin/init',
  compression: 'zstd',
  platform: 'linux/amd64',
  nics: ['virtio_pci', 'virtio_net'],
};
const MAC = '52:54:00:00:04:10';
const BOOT_TIMEOUT = 300_000;

describe('netboot initramfs into a systemd image', () => {
  let fixture: KernelFixture;
  let work: string;
  let lab: BootLab;
  let initrd: string;

  beforeAll(async () => {
    fixture = await debianKernelFixture(['systemd-sysv']);
    work = await mkdtemp(join(tmpdir(), 'netboot-initramfs-systemd-'));
    const built = await writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: IMAGE, outDir: work });
    expect(built.modules).toEqual(expect.arrayContaining(['virtio_net', 'virtio_pci', 'squashfs', 'overlay', 'loop', 'nbd']));
    expect(built.modules).not.toContain('e1000');
    initrd = built.path;
    await writeFile(join(work, 'layer.tar'), await testLayerTar('vm-systemd'));
    // /init takes the rootfs size from the image's manifest.
    await writeFile(join(work, 'manifest.json'), JSON.stringify({ artifacts: { 'rootfs.squashfs': { size: (await stat(fixture.squashfs)).size } } }));
    lab = await createBootLab({
      '/images/sd/rootfs.squashfs': { file: fixture.squashfs },
      '/images/sd/manifest.json': { file: join(work, 'manifest.json') },
      [`/machines/${MAC.replace(/:/g, '-')}/layer`]: { file: join(work, 'layer.tar') },
    });
  }, 1_200_000);

  afterAll(async () => {
    await lab?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('reaches multi-user and netboot-up.service reports `up` with the layer hostname', async () => {
    const result = await lab.boot({
      kernel: fixture.vmlinuz,
      initrd,
      nic: 'virtio-net-pci',
      mac: MAC,
      append: `console=ttyS0 netboot.server=${lab.serverUrl} netboot.mac=${MAC} netboot.image=sd netboot.reboot=0`,
      until: /login: |netboot: FAILED/,
      timeoutMs: BOOT_TIMEOUT,
    });
    // systemd colours and truncates its status lines: strip the escapes before looking.
    const plain = result.console.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
    expect(plain, plain.slice(-4000)).toMatch(/vm-systemd login: /);
    expect(plain).toMatch(/OK +\] Finished netboot-up\.servic/);
    const events = lab.events.filter((e) => e.mac === MAC.replace(/:/g, '-'));
    expect(phasesOf(events, MAC.replace(/:/g, '-'))).toEqual(['init', 'net', 'layer', 'rootfs', 'switch_root', 'up']);
    expect(events.at(-1)!.detail).toBe('vm-systemd');
  }, BOOT_TIMEOUT + 10_000);
});
