import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../server/config/types.ts';
import type { BuildOptions } from '../../server/images/cache.ts';
import { makeInitrd, writeInitrd } from '../../server/initramfs/index.ts';
import { debianKernelFixture, type KernelFixture } from './fixture.ts';

// The image pipeline calls makeInitrd through this hook: a type error here is a broken contract.
const hook: NonNullable<BuildOptions['makeInitrd']> = makeInitrd;

const IMAGE: Image = {
  name: 'debian',
  source: 'docker:x',
  cmdline: '',
  root: 'ram',
  initramfs: 'netboot',
  init: '/sbin/init',
  compression: 'zstd',
  platform: 'linux/amd64',
};

describe('makeInitrd, the image pipeline hook', () => {
  let fixture: KernelFixture;
  let out: string;
  beforeAll(async () => {
    fixture = await debianKernelFixture();
    out = await mkdtemp(join(tmpdir(), 'netboot-hook-'));
  }, 600_000);
  afterAll(async () => {
    if (out) await rm(out, { recursive: true, force: true });
  });

  it('writes outDir/initrd.img and nothing else, shipping only the configured NICs', async () => {
    const info = await writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: { ...IMAGE, nics: ['e1000', 'not_a_driver'] }, outDir: out });
    expect(await readdir(out)).toEqual(['initrd.img']);
    expect((await stat(info.path)).size).toBe(info.size);
    // The base set (root filesystem, disk drivers for disk: machines), then only the configured NIC: no other NIC driver.
    const nics = info.modules.filter((name) => /^(e1000|e1000e|igb|virtio_net|r8169|tg3)$/.test(name));
    expect(nics).toEqual(['e1000']);
    expect(info.modules).toEqual(expect.arrayContaining(['squashfs', 'overlay', 'loop', 'nbd', 'ext4', 'virtio_blk']));
    // not_a_driver does not exist; the fixture left out drivers/scsi, so the SCSI/SATA disk modules are skipped too.
    expect(info.unavailable).toEqual(expect.arrayContaining(['not_a_driver', 'sd_mod', 'ahci']));
    await hook({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: IMAGE, outDir: out, log: (await import('../../server/log.ts')).silentLogger });
  }, 60_000);

  it('refuses clearly when no configured NIC driver exists, or the platform has no busybox here', async () => {
    await expect(
      writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: { ...IMAGE, nics: ['nope1', 'nope2'] }, outDir: out }),
    ).rejects.toThrow(/none of the NIC drivers configured for image debian \(nope1, nope2\) exist in kernel 6\./);
    await expect(writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: { ...IMAGE, platform: 'linux/s390x' }, outDir: out })).rejects.toThrow(
      /platform linux\/s390x is not supported/,
    );
    await expect(writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: { ...IMAGE, platform: 'linux/arm64', root: 'nbd' }, outDir: out })).rejects.toThrow(
      /root: nbd needs the initramfs NBD client built for linux\/arm64/,
    );
    await expect(writeInitrd({ squashfs: fixture.squashfs, kernelVersion: '0.0.0-none', image: IMAGE, outDir: out })).rejects.toThrow(
      /no modules\.dep for kernel 0\.0\.0-none \(looked for \/usr\/lib\/modules\/0\.0\.0-none\/modules\.dep, \/lib\/modules/,
    );
    expect(await readdir(out)).toEqual(['initrd.img']);
  }, 60_000);
});
