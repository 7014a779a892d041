import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeInitrd } from '../../server/initramfs/index.ts';
import { debianKernelFixture, fixtureImage, type KernelFixture } from './fixture.ts';
import { createBootLab, type BootLab, type LabEvent } from './lab.ts';
import { testLayerTar } from './layer.ts';

const run = promisify(execFile);

/**
 * Machines with a disk (config `disk:`, boot-assets/initramfs/lib/netboot/disk.sh): the real
 * kernel boots our initramfs in QEMU with a virtio disk, against a stand-in server that counts
 * the bytes it sends. One machine boots five times on one disk file: prepared and filled,
 * a cache hit with no root bytes sent, a copy corrupted on the host and fetched again, a new
 * image id that pushes the old one out of the budget. Another machine's disk carries someone
 * else's filesystem and must come out byte-identical.
 */

const IMAGE = fixtureImage();

const MAC = '52:54:00:00:19:01';
const FOREIGN_MAC = '52:54:00:00:19:02';
const hyphens = (mac: string) => mac.replace(/:/g, '-');
const BOOT_TIMEOUT = 300_000;
const PARTITION_OFFSET = 1024 * 1024; // disk.sh's one partition starts at sector 2048

/** Counts lines of a file under a kept directory and one elsewhere, then adds a line to each. */
const DISK_INIT = `#!/bin/sh
/run/netboot/busybox sh /run/netboot/report-up
kept=$(cat /home/kept 2>/dev/null | wc -l)
fresh=$(cat /var/fresh 2>/dev/null | wc -l)
echo "NETBOOT-DISK-UP kept=$kept fresh=$fresh lower=$(awk '$2 == "/run/netboot/disk" {print $1}' /proc/mounts) home=$(awk '$2 == "/home" {print $3}' /proc/mounts)"
echo boot >> /home/kept
echo boot >> /var/fresh
sync
/run/netboot/busybox poweroff -f
`;

const MARKER = /NETBOOT-DISK-UP kept=(\d+) fresh=(\d+) lower=(\S*) home=(\S*)/;

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
    initrd = (await writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: IMAGE, outDir: work })).path;
    size = (await stat(fixture.squashfs)).size;
    // Room for one copy, not two: a second image id must push the first out.
    budgetMiB = Math.ceil((size * 1.5) / 1048576);
    const sha256 = createHash('sha256').update(await readFile(fixture.squashfs)).digest('hex');
    await writeFile(join(work, 'manifest.json'), JSON.stringify({ artifacts: { 'rootfs.squashfs': { size, sha256 } } }));
    await writeFile(join(work, 'layer.tar'), await testLayerTar('disk-machine', DISK_INIT));
    await writeFile(join(work, 'foreign.tar'), await testLayerTar('foreign-disk', DISK_INIT));
    lab = await createBootLab({
      '/images/img1/rootfs.squashfs': { file: fixture.squashfs },
      '/images/img1/manifest.json': { file: join(work, 'manifest.json') },
      '/images/img2/rootfs.squashfs': { file: fixture.squashfs },
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

  it('first boot on an empty disk with disk.init: partitions it, downloads the root once into the cache, seeds /home', async () => {
    const first = await boot(MAC, 'img1', disk, diskArgs('netboot.disk.init'));
    expect(detail(first.disk)).toEqual([
      expect.stringMatching(/^prepared: \/dev\/vda, partition \/dev\/vda1, ext2 labelled netboot$/),
      expect.stringMatching(/^cache_miss: img1, \d+ bytes downloaded and kept on \/dev\/vda1$/),
      'keep: /home',
    ]);
    expect(first.rootfsBytes).toBe(size);
    expect(first).toMatchObject({ kept: 0, fresh: 0, lower: '/dev/vda1', home: 'ext4' });
    await withDiskMounted(async (root) => {
      expect(await readdir(join(root, 'images'))).toEqual(['img1.squashfs']);
      expect((await readFile(join(root, 'keep/home/kept'), 'utf8')).trim()).toBe('boot');
      expect(await readFile(join(root, 'keep/home/alice/secret'), 'utf8')).toBe('hunter2\n');
    });
  }, BOOT_TIMEOUT + 60_000);

  it('second boot of the same id: 0 root bytes over the network, /home kept, /var fresh', async () => {
    const second = await boot(MAC, 'img1', disk, diskArgs());
    expect(detail(second.disk)).toEqual([`cache_hit: img1, ${size} bytes read from disk instead of the network`, 'keep: /home']);
    expect(second.disk[0]).toMatchObject({ bytes: size });
    expect(second.rootfsBytes).toBe(0);
    expect(second).toMatchObject({ kept: 1, fresh: 0 });
  }, BOOT_TIMEOUT + 10_000);

  it('a cached copy corrupted between boots fails its sha256 and is downloaded again', async () => {
    await withDiskMounted(async (root) => {
      const file = await open(join(root, 'images/img1.squashfs'), 'r+');
      try {
        const at = Math.floor(size / 2);
        const byte = Buffer.alloc(1);
        await file.read(byte, 0, 1, at);
        byte[0] = byte[0]! ^ 0xff;
        await file.write(byte, 0, 1, at);
      } finally {
        await file.close();
      }
    });
    const third = await boot(MAC, 'img1', disk, diskArgs());
    expect(third.console).toMatch(/disk cache: the cached copy of img1 does not match its sha256: downloading it again/);
    expect(detail(third.disk)).toEqual([
      'cache_corrupt: img1 failed its sha256 check, downloading again',
      expect.stringMatching(/^cache_miss: img1, /),
      'keep: /home',
    ]);
    expect(third.rootfsBytes).toBe(size);
    expect(third.kept).toBe(2);
  }, BOOT_TIMEOUT + 60_000);

  it('a new image id is downloaded once and the old one pruned to keep within the budget', async () => {
    const fourth = await boot(MAC, 'img2', disk, diskArgs());
    expect(detail(fourth.disk)).toEqual([expect.stringMatching(/^cache_miss: img2, \d+ bytes downloaded and kept on \/dev\/vda1; pruned img1$/), 'keep: /home']);
    expect(fourth.rootfsBytes).toBe(size);
    expect(fourth.kept).toBe(3);
    await withDiskMounted(async (root) => expect(await readdir(join(root, 'images'))).toEqual(['img2.squashfs']));
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
    expect(result).toMatchObject({ lower: '', home: '' });
    expect(result.rootfsBytes).toBe(size);
    expect(createHash('sha256').update(await readFile(foreign)).digest('hex')).toBe(before);
  }, BOOT_TIMEOUT + 10_000);
});
