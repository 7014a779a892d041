import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cachedFixture, recipeKey } from '../fixtures/cache.ts';
import { debianTarball } from '../fixtures/debian.ts';
import type { Image } from '../../server/config/types.ts';

const run = promisify(execFile);

export interface KernelFixture {
  dir: string;
  vmlinuz: string;
  squashfs: string;
  kernelVersion: string;
}

/**
 * Bulky module trees no netboot initramfs needs: left out of the fixture's squashfs so the
 * VM downloads tens of MB, not hundreds (modules.dep still lists them all).
 */
const EXCLUDES = [
  './boot/initrd.img-*',
  './usr/lib/modules/*/kernel/drivers/gpu',
  './usr/lib/modules/*/kernel/drivers/media',
  './usr/lib/modules/*/kernel/drivers/infiniband',
  './usr/lib/modules/*/kernel/drivers/scsi',
  './usr/lib/modules/*/kernel/drivers/iio',
  './usr/lib/modules/*/kernel/drivers/staging',
  './usr/lib/modules/*/kernel/drivers/hid',
  './usr/lib/modules/*/kernel/drivers/input',
  './usr/lib/modules/*/kernel/drivers/net/wireless',
  './usr/lib/modules/*/kernel/drivers/bluetooth',
  './usr/lib/modules/*/kernel/sound',
  './usr/lib/modules/*/kernel/net/bluetooth',
  './usr/lib/modules/*/kernel/net/mac80211',
  './usr/lib/modules/*/kernel/net/wireless',
  './usr/lib/modules/*/kernel/lib/test_bpf.ko',
  './usr/lib/modules/*/kernel/fs/xfs',
  './usr/lib/modules/*/kernel/fs/btrfs',
  './usr/lib/modules/*/kernel/fs/ocfs2',
  './usr/lib/udev/hwdb.bin',
];

/**
 * A Debian bookworm minbase with linux-image-amd64 (apt ran depmod) and `extraPackages`
 * (e.g. systemd-sysv): its kernel, its version, and its root as a zstd squashfs. Stands in
 * for the image pipeline's output.
 */
export async function debianKernelFixture(extraPackages: string[] = []): Promise<KernelFixture> {
  const tarball = await debianTarball({ include: ['linux-image-amd64', ...extraPackages] });
  const dir = await cachedFixture(`initramfs-kernel-${recipeKey('initramfs-kernel', 1, tarball, EXCLUDES)}`, async (out) => {
    await mkdir(out, { recursive: true });
    const { stdout } = await run('tar', ['-tf', tarball], { maxBuffer: 256 << 20 });
    const kernel = stdout.split('\n').find((path) => /^\.\/boot\/vmlinuz-/.test(path));
    if (!kernel) throw new Error(`no /boot/vmlinuz-* in ${tarball}`);
    const kver = kernel.replace('./boot/vmlinuz-', '');
    await run('sh', ['-c', `tar -xOf "$1" "$2" > "$3"`, 'sh', tarball, kernel, join(out, 'vmlinuz')]);
    const excludes = EXCLUDES.map((pattern) => `--exclude='${pattern}'`).join(' ');
    await run('sh', ['-c', `bsdtar -cf - ${excludes} @"$1" | tar2sqfs -q -c zstd -j 2 "$2"`, 'sh', tarball, join(out, 'rootfs.squashfs')], {
      maxBuffer: 64 << 20,
    });
    await writeFile(join(out, 'kver'), `${kver}\n`);
  });
  return {
    dir,
    vmlinuz: join(dir, 'vmlinuz'),
    squashfs: join(dir, 'rootfs.squashfs'),
    kernelVersion: (await readFile(join(dir, 'kver'), 'utf8')).trim(),
  };
}

/** The image entry the initramfs tests build for (the fixture stands in for its pipeline output). */
export function fixtureImage(name = 'debian'): Image {
  return { name, source: 'docker:netboot-test/debian', cmdline: '', root: 'ram', initramfs: 'netboot', init: '/sbin/init', compression: 'zstd', platform: 'linux/amd64' };
}
