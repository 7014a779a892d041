import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cachedFixture, recipeKey } from '../fixtures/cache.ts';
import { debianTarball } from '../fixtures/debian.ts';

const run = promisify(execFile);

/** The whole marker line the image's init prints once it runs in the booted root. */
export const ARM64_MARKER = /NETBOOT-ARM64-UP hostname=(\S*) arch=(\S*) image=(\S*) root=(\S*) uptime=(\S*)\r?\n/;

/**
 * The image's own init for the test (netboot.init): proves userspace of the image runs on the
 * arm64 CPU in the overlay root with its top layer (/etc/hostname), prints the kernel's uptime
 * (time spent since the kernel started), then powers off.
 */
const INIT = `#!/bin/sh
mount -t proc proc /proc 2>/dev/null
image=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^netboot.image=//p')
root=$(awk '$2 == "/" {print $3}' /proc/mounts | tail -n1)
echo "NETBOOT-ARM64-UP hostname=$(cat /etc/hostname 2>/dev/null) arch=$(uname -m) image=$image root=$root uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
echo o > /proc/sysrq-trigger
# The power-off runs asynchronously: init must not exit first (the kernel would panic).
sleep 60
`;
export const ARM64_INIT_PATH = '/usr/local/sbin/netboot-arm64-init';

/**
 * Bulky module trees no netboot initramfs needs (none is a dependency of a NIC driver or of
 * squashfs/overlay/loop/nbd), and the device trees of real boards: left out so the VM downloads
 * a smaller root. modules.dep still lists them all.
 */
const TRIM = [
  'usr/lib/linux-image-*',
  ...['gpu', 'media', 'infiniband', 'scsi', 'iio', 'staging', 'hid', 'input', 'net/wireless', 'bluetooth', 'sound'].map((d) => `usr/lib/modules/*/kernel/drivers/${d}`),
  ...['sound', 'net/bluetooth', 'net/mac80211', 'net/wireless', 'fs/xfs', 'fs/btrfs', 'fs/ocfs2'].map((d) => `usr/lib/modules/*/kernel/${d}`),
];

/**
 * A Debian bookworm arm64 image as a `docker save` archive (architecture arm64 in its config),
 * made without any engine from a debootstrap --arch arm64 minbase with linux-image-arm64 (the
 * second stage runs under qemu-user-static; about 15 min cold). Cached in FIXTURE_DIR.
 */
export async function debianArm64Archive(): Promise<string> {
  // NETBOOT_ARM64_ROOTFS: an arm64 root tarball made elsewhere (same layout: ./ paths, numeric owners) instead of debootstrap.
  const tarball = process.env.NETBOOT_ARM64_ROOTFS ?? (await debianTarball({ arch: 'arm64', include: ['linux-image-arm64'] }));
  const dir = await cachedFixture(`arm64-image-${recipeKey('arm64-image', 1, tarball, TRIM, INIT)}`, async (out) => {
    await mkdir(out, { recursive: true });
    const root = await mkdtemp(join(tmpdir(), 'netboot-arm64-root-'));
    try {
      await run('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-xpf', tarball, '-C', root], { maxBuffer: 64 << 20 });
      const trim = `rm -rf boot/initrd.img-* usr/lib/udev/hwdb.bin var/cache/apt/* var/lib/apt/lists/* ${TRIM.join(' ')}`;
      await run('sh', ['-c', trim], { cwd: root });
      await writeFile(join(root, ARM64_INIT_PATH), INIT, { mode: 0o755 });
      const layer = join(out, 'layer.tar');
      await run('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--sort=name', '-C', root, '-cf', layer, '.'], { maxBuffer: 64 << 20 });
      const diffId = `sha256:${await sha256File(layer)}`;
      const config = JSON.stringify({ architecture: 'arm64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [diffId] } });
      await writeFile(join(out, 'config.json'), config);
      await writeFile(join(out, 'manifest.json'), JSON.stringify([{ Config: 'config.json', RepoTags: ['netboot-test/debian-arm64:latest'], Layers: ['layer.tar'] }]));
      await run('tar', ['-C', out, '-cf', join(out, 'image.tar'), 'manifest.json', 'config.json', 'layer.tar']);
      await rm(layer);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
  return join(dir, 'image.tar');
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
