import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeVerityTree } from '../../server/images/verity.ts';
import { writeInitrd } from '../../server/initramfs/index.ts';
import { verityHelperFiles } from '../../server/initramfs/verity-helper.ts';
import { debianKernelFixture, fixtureImage, type KernelFixture } from './fixture.ts';
import { createBootLab, type BootLab, type LabEvent } from './lab.ts';
import { testLayerTar } from './layer.ts';

const run = promisify(execFile);

/**
 * Machines with a disk (config `disk:`, boot-assets/initramfs/lib/netboot/disk.sh): the real
 * kernel boots our initramfs in QEMU with a virtio disk, against a stand-in server that counts
 * the bytes it sends. One machine boots six times on one disk file: prepared and filled; a
 * cache hit with no root bytes sent, read in full through dm-verity; a superblock corrupted on
 * the host (dm-verity fails the mount, fetched again); a deep block corrupted (the boot comes
 * up, the read fails, the marker stays) and the next boot's full check fetching it again; a
 * new image id that pushes the old one out of the budget. Another machine's disk carries
 * someone else's filesystem and must come out byte-identical.
 */

const IMAGE = fixtureImage();

const MAC = '52:54:00:00:19:01';
const FOREIGN_MAC = '52:54:00:00:19:02';
const hyphens = (mac: string) => mac.replace(/:/g, '-');
const BOOT_TIMEOUT = 300_000;
const PARTITION_OFFSET = 1024 * 1024; // disk.sh's one partition starts at sector 2048

/**
 * Counts lines of a file under a kept directory and one elsewhere, then adds a line to each.
 * With /home/readall (put there by the test) it first reads the whole cached root through
 * dm-verity. Reports `up` (which clears the disk marker unless dm-verity saw a bad block).
 */
const DISK_INIT = `#!/bin/sh
readall=-
if [ -e /home/readall ]; then
	rm -f /home/readall
	cat /dev/dm-0 >/dev/null 2>/dev/null
	readall=$?
fi
verity=$(/run/netboot/netboot-verity status netboot-root 2>/dev/null || echo none)
/run/netboot/busybox sh /run/netboot/report-up
marker=no
ls /run/netboot/disk/images/*.booting >/dev/null 2>&1 && marker=yes
kept=$(cat /home/kept 2>/dev/null | wc -l)
fresh=$(cat /var/fresh 2>/dev/null | wc -l)
echo "NETBOOT-DISK-UP kept=$kept fresh=$fresh lower=$(awk '$2 == "/run/netboot/disk" {print $1}' /proc/mounts) home=$(awk '$2 == "/home" {print $3}' /proc/mounts) verity=$verity readall=$readall marker=$marker"
echo boot >> /home/kept
echo boot >> /var/fresh
sync
/run/netboot/busybox poweroff -f
`;

const MARKER = /NETBOOT-DISK-UP kept=(\d+) fresh=(\d+) lower=(\S*) home=(\S*) verity=(\S+) readall=(\S+) marker=(\S+)/;

describe('machines with a disk: image cache and kept directories (QEMU, virtio disk)', () => {
  let fixture: KernelFixture;
  let work: string;
  let initrd: string;
  let lab: BootLab;
  let size: number;
  let disk: string;
  let budgetMiB: number;

  beforeAll(async () => {
    fixture = await debianKernelFixture();
    work = await mkdtemp(join(tmpdir(), 'netboot-disk-'));
    initrd = (await writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: IMAGE, outDir: work, extraFiles: await verityHelperFiles() })).path;
    size = (await stat(fixture.squashfs)).size;
    // Room for one copy, not two: a second image id must push the first out.
    budgetMiB = Math.ceil((size * 1.5) / 1048576);
    const sha256 = createHash('sha256').update(await readFile(fixture.squashfs)).digest('hex');
    const tree = join(work, 'rootfs.verity');
    const verity = await writeVerityTree(fixture.squashfs, tree, Buffer.from(sha256, 'hex'));
    expect(verity).not.toBeNull();
    const treeInfo = { size: (await stat(tree)).size, sha256: createHash('sha256').update(await readFile(tree)).digest('hex') };
    await writeFile(join(work, 'manifest.json'), JSON.stringify({ artifacts: { 'rootfs.squashfs': { size, sha256 }, 'rootfs.verity': treeInfo }, verity }, null, 2));
    await writeFile(join(work, 'layer.tar'), await testLayerTar('disk-machine', DISK_INIT));
    await writeFile(join(work, 'foreign.tar'), await testLayerTar('foreign-disk', DISK_INIT));
    lab = await createBootLab({
      '/images/img1/rootfs.squashfs': { file: fixture.squashfs },
      '/images/img1/rootfs.verity': { file: tree },
      '/images/img1/manifest.json': { file: join(work, 'manifest.json') },
      '/images/img2/rootfs.squashfs': { file: fixture.squashfs },
      '/images/img2/rootfs.verity': { file: tree },
      '/images/img2/manifest.json': { file: join(work, 'manifest.json') },
      [`/machines/${hyphens(MAC)}/layer`]: { file: join(work, 'layer.tar') },
      [`/machines/${hyphens(FOREIGN_MAC)}/layer`]: { file: join(work, 'foreign.tar') },
    });
    disk = join(work, 'disk.img');
    await writeFile(disk, '');
    await truncate(disk, 512 * 1048576);
  }, 900_000);

  afterAll(async () => {
    await lab?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Boots `mac` once; returns the console, its marker, the events and the rootfs bytes the server sent during that boot. */
  async function boot(mac: string, image: string, diskFile: string, args: string) {
    const events = lab.events.length;
    const served = lab.served.length;
    const result = await lab.boot({
      kernel: fixture.vmlinuz,
      initrd,
      nic: 'virtio-net-pci',
      mac,
      disks: [diskFile],
      append: `console=ttyS0 netboot.server=${lab.serverUrl} netboot.init=/etc/netboot-test-init netboot.reboot=0 netboot.mac=${mac} netboot.image=${image} ${args}`,
      timeoutMs: BOOT_TIMEOUT,
    });
    const marker = MARKER.exec(result.console);
    expect(marker, result.console.slice(-4000)).not.toBeNull();
    const bootEvents = lab.events.slice(events).filter((e) => e.mac === hyphens(mac));
    const rootfsBytes = lab.served
      .slice(served)
      .filter((s) => s.path.endsWith('/rootfs.squashfs'))
      .reduce((sum, s) => sum + s.bytes, 0);
    return {
      console: result.console,
      kept: Number(marker![1]),
      fresh: Number(marker![2]),
      lower: marker![3],
      home: marker![4],
      verity: marker![5],
      readAll: marker![6],
      marker: marker![7],
      disk: bootEvents.filter((e) => e.phase === 'disk'),
      rootfsBytes,
    };
  }

  const diskArgs = (extra = '') => `netboot.disk=netboot netboot.disk.cache=${budgetMiB} netboot.disk.keep=/home ${extra}`;
  const detail = (events: LabEvent[]) => events.map((e) => e.detail);

  /** What the cache directory on the disk file holds, read by the host's kernel (ext2 at the partition's offset). */
  async function withDiskMounted<T>(fn: (root: string) => Promise<T>): Promise<T> {
    const mnt = await mkdtemp(join(work, 'mnt-'));
    await run('mount', ['-t', 'ext4', '-o', `loop,offset=${PARTITION_OFFSET}`, disk, mnt]);
    try {
      return await fn(mnt);
    } finally {
      await run('umount', [mnt]);
      await rm(mnt, { recursive: true, force: true });
    }
  }

  /** Flips one byte of the cached copy of `image` on the host, at `at`. */
  async function flipCachedByte(image: string, at: number): Promise<void> {
    await withDiskMounted(async (root) => {
      const file = await open(join(root, `images/${image}.squashfs`), 'r+');
      try {
        const byte = Buffer.alloc(1);
        await file.read(byte, 0, 1, at);
        byte[0] = byte[0]! ^ 0xff;
        await file.write(byte, 0, 1, at);
      } finally {
        await file.close();
      }
    });
  }

  /** The next boot reads the whole cached root through dm-verity (DISK_INIT). */
  const readAllNextBoot = () => withDiskMounted((root) => writeFile(join(root, 'keep/home/readall'), ''));

  it('first boot on an empty disk with disk.init: partitions it, downloads the root once into the cache, seeds /home', async () => {
    const first = await boot(MAC, 'img1', disk, diskArgs('netboot.disk.init'));
    expect(detail(first.disk)).toEqual([
      expect.stringMatching(/^prepared: \/dev\/vda, partition \/dev\/vda1, ext2 labelled netboot$/),
      expect.stringMatching(/^cache_miss: img1, \d+ bytes downloaded and kept on \/dev\/vda1$/),
      'keep: /home',
    ]);
    expect(first.rootfsBytes).toBe(size);
    // Mounted through dm-verity from the first boot on; up, so the marker is gone.
    expect(first).toMatchObject({ kept: 0, fresh: 0, lower: '/dev/vda1', home: 'ext4', verity: 'verified', marker: 'no' });
    await withDiskMounted(async (root) => {
      expect((await readdir(join(root, 'images'))).sort()).toEqual(['img1.squashfs', 'img1.verity']);
      expect((await readFile(join(root, 'keep/home/kept'), 'utf8')).trim()).toBe('boot');
      expect(await readFile(join(root, 'keep/home/alice/secret'), 'utf8')).toBe('hunter2\n');
      await writeFile(join(root, 'keep/home/readall'), '');
    });
  }, BOOT_TIMEOUT + 60_000);

  it('second boot of the same id: 0 root bytes over the network, every block checked by dm-verity, /home kept, /var fresh', async () => {
    const second = await boot(MAC, 'img1', disk, diskArgs());
    expect(detail(second.disk)).toEqual([`cache_hit: img1, ${size} bytes read from disk instead of the network (dm-verity: each block checked when read)`, 'keep: /home']);
    expect(second.console).not.toMatch(/checking img1/);
    expect(second.disk[0]).toMatchObject({ bytes: size });
    expect(second.rootfsBytes).toBe(0);
    // The whole root read through dm-verity without an error: our tree matches the kernel's idea of it.
    expect(second).toMatchObject({ kept: 1, fresh: 0, verity: 'verified', readAll: '0', marker: 'no' });
  }, BOOT_TIMEOUT + 10_000);

  it('a superblock corrupted between boots fails dm-verity at mount and is downloaded again in the same boot', async () => {
    await flipCachedByte('img1', 100);
    const third = await boot(MAC, 'img1', disk, diskArgs());
    expect(third.console).toMatch(/disk cache: the cached copy of img1 failed its dm-verity check \(.*corrupt\): downloading it again/);
    expect(detail(third.disk)).toEqual([
      expect.stringMatching(/^cache_corrupt: img1 failed its dm-verity check \(.*\), downloading again$/),
      expect.stringMatching(/^cache_miss: img1, /),
      'keep: /home',
    ]);
    expect(third.rootfsBytes).toBe(size);
    expect(third).toMatchObject({ kept: 2, verity: 'verified', marker: 'no' });
  }, BOOT_TIMEOUT + 60_000);

  it('a deep block corrupted between boots: the read fails, the marker stays, and the next boot checks all of it and downloads again', async () => {
    await flipCachedByte('img1', Math.floor(size / 2));
    await readAllNextBoot();
    const fourth = await boot(MAC, 'img1', disk, diskArgs());
    expect(detail(fourth.disk)[0]).toMatch(/^cache_hit: img1, .*\(dm-verity: each block checked when read\)$/);
    expect(fourth).toMatchObject({ kept: 3, verity: 'corrupt', marker: 'yes' });
    expect(fourth.readAll).not.toBe('0');
    expect(fourth.console).toMatch(/dm-verity found a corrupt block in the cached root: the next boot checks all of it/);

    const fifth = await boot(MAC, 'img1', disk, diskArgs());
    expect(fifth.console).toMatch(/disk cache: the last boot from img1 did not come up: checking all of it/);
    expect(detail(fifth.disk)).toEqual([
      'cache_corrupt: img1 failed its sha256 check, downloading again',
      expect.stringMatching(/^cache_miss: img1, /),
      'keep: /home',
    ]);
    expect(fifth.rootfsBytes).toBe(size);
    expect(fifth).toMatchObject({ kept: 4, verity: 'verified', marker: 'no' });
  }, 2 * BOOT_TIMEOUT + 60_000);

  it('a new image id is downloaded once and the old one pruned to keep within the budget', async () => {
    const sixth = await boot(MAC, 'img2', disk, diskArgs());
    expect(detail(sixth.disk)).toEqual([expect.stringMatching(/^cache_miss: img2, \d+ bytes downloaded and kept on \/dev\/vda1; pruned img1$/), 'keep: /home']);
    expect(sixth.rootfsBytes).toBe(size);
    expect(sixth.kept).toBe(5);
    await withDiskMounted(async (root) => expect((await readdir(join(root, 'images'))).sort()).toEqual(['img2.squashfs', 'img2.verity']));
  }, BOOT_TIMEOUT + 60_000);

  it("leaves a disk with someone else's filesystem untouched (no disk.init) and boots diskless with a clear message", async () => {
    const foreign = join(work, 'foreign.img');
    await writeFile(foreign, '');
    await truncate(foreign, 64 * 1048576);
    await run('mkfs.ext4', ['-q', '-L', 'data', '-E', 'nodiscard', foreign]);
    const before = createHash('sha256').update(await readFile(foreign)).digest('hex');
    const result = await boot(FOREIGN_MAC, 'img1', foreign, diskArgs());
    expect(result.console).toMatch(/netboot: disk: \/dev\/vda holds data netboot does not recognise \(no filesystem labelled netboot\): left untouched; booting diskless/);
    expect(detail(result.disk)).toEqual(['untouched: /dev/vda holds data netboot does not recognise (no filesystem labelled netboot): left untouched']);
    expect(result).toMatchObject({ lower: '', home: '', verity: 'none', marker: 'no' });
    expect(result.rootfsBytes).toBe(size);
    expect(createHash('sha256').update(await readFile(foreign)).digest('hex')).toBe(before);
  }, BOOT_TIMEOUT + 10_000);
});
