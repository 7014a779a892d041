import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeInitrd } from '../../server/initramfs/index.ts';
import { debianKernelFixture, fixtureImage, type KernelFixture } from './fixture.ts';
import { createBootLab, phasesOf, type BootLab } from './lab.ts';
import { testLayerTar } from './layer.ts';

/**
 * Real kernel, real VM: the Debian kernel boots our initramfs under QEMU (TCG) against a
 * stand-in HTTP server in a private namespace; a marker init from the top layer proves
 * userspace was reached on the overlay. Each boot is ~20-30 s under TCG.
 */

const IMAGE = fixtureImage();

const VIRTIO_MAC = '52:54:00:00:04:01';
const E1000_MAC = '52:54:00:00:04:02';
const FAIL_MAC = '52:54:00:00:04:03';
const hyphens = (mac: string) => mac.replace(/:/g, '-');
const FAIL_MAC_HYPHENS = hyphens(FAIL_MAC);
const BOOT_TIMEOUT = 240_000;

describe('netboot initramfs boots a real kernel in QEMU', () => {
  let fixture: KernelFixture;
  let work: string;
  let initrd: string;
  let lab: BootLab;
  let squashfsSize: number;

  beforeAll(async () => {
    fixture = await debianKernelFixture();
    work = await mkdtemp(join(tmpdir(), 'netboot-initramfs-boot-'));
    await mkdir(join(work, 'a'));
    initrd = (await writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: IMAGE, outDir: join(work, 'a') })).path;
    squashfsSize = (await stat(fixture.squashfs)).size;
    const sha256 = createHash('sha256').update(await readFile(fixture.squashfs)).digest('hex');
    await writeFile(join(work, 'manifest.json'), JSON.stringify({ kernelVersion: fixture.kernelVersion, artifacts: { 'rootfs.squashfs': { size: squashfsSize, sha256 } } }, null, 2));
    // The size /init downloads comes from the manifest: trunc's says what is served (a broken build), norootfs's points at nothing.
    await writeFile(join(work, 'trunc.json'), JSON.stringify({ artifacts: { 'rootfs.squashfs': { size: Math.floor(squashfsSize / 2), sha256 } } }));
    await writeFile(join(work, 'norootfs.json'), JSON.stringify({ artifacts: { 'rootfs.squashfs': { size: squashfsSize, sha256 } } }));
    await writeFile(join(work, 'virtio.tar'), await testLayerTar('vm-virtio'));
    await writeFile(join(work, 'e1000.tar'), await testLayerTar('vm-e1000'));
    await writeFile(join(work, 'fail.tar'), await testLayerTar('vm-fail'));
    lab = await createBootLab({
      '/images/img1/rootfs.squashfs': { file: fixture.squashfs },
      '/images/img1/manifest.json': { file: join(work, 'manifest.json') },
      '/images/trunc/rootfs.squashfs': { file: fixture.squashfs, truncate: Math.floor(squashfsSize / 2) },
      '/images/trunc/manifest.json': { file: join(work, 'trunc.json') },
      '/images/norootfs/manifest.json': { file: join(work, 'norootfs.json') },
      [`/machines/${hyphens(VIRTIO_MAC)}/layer`]: { file: join(work, 'virtio.tar') },
      [`/machines/${hyphens(E1000_MAC)}/layer`]: { file: join(work, 'e1000.tar') },
      [`/machines/${hyphens(FAIL_MAC)}/layer`]: { file: join(work, 'fail.tar') },
    });
  }, 900_000);

  afterAll(async () => {
    await lab?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const cmdline = (extra: string) => `console=ttyS0 netboot.server=${lab.serverUrl} netboot.init=/etc/netboot-test-init netboot.reboot=0 ${extra}`;
  const failedLine = (console: string) => console.split(/\r?\n/).filter((line) => line.startsWith('netboot: FAILED at '));

  it('builds a byte-identical initrd twice (zstd, as the kernel config allows)', async () => {
    await mkdir(join(work, 'b'));
    const again = await writeInitrd({ squashfs: fixture.squashfs, kernelVersion: fixture.kernelVersion, image: IMAGE, outDir: join(work, 'b') });
    expect(again.compression).toBe('zstd');
    expect((await readFile(again.path)).equals(await readFile(initrd))).toBe(true);
  }, 120_000);

  it('virtio-net: reaches the image userspace on the overlay with the layer hostname, events in order', async () => {
    const result = await lab.boot({
      kernel: fixture.vmlinuz,
      initrd,
      nic: 'virtio-net-pci',
      mac: VIRTIO_MAC,
      append: cmdline(`netboot.mac=${VIRTIO_MAC} netboot.image=img1`),
      timeoutMs: BOOT_TIMEOUT,
    });
    const marker = /NETBOOT-TEST-UP hostname=(\S+) secret=(\S+) root=(.*)/.exec(result.console);
    expect(marker, result.console.slice(-3000)).not.toBeNull();
    expect(marker![1]).toBe('vm-virtio');
    expect(marker![2]).toBe('1000:1000:600'); // owners and modes from the layer tar kept
    expect(marker![3]).toMatch(/^overlay \/ overlay .*lowerdir=[^,]+:[^,]+,upperdir=/);
    expect(result.console).toContain('virtio_net');
    expect(phasesOf(lab.events, hyphens(VIRTIO_MAC))).toEqual(['init', 'net', 'layer', 'rootfs', 'switch_root', 'up']);
    const times = lab.events.filter((e) => e.mac === hyphens(VIRTIO_MAC)).map((e) => e.t);
    expect([...times].sort((a, b) => a - b)).toEqual(times);
  }, BOOT_TIMEOUT + 10_000);

  it('e1000 with BOOTIF= and netboot.verify: checks the sha256 from manifest.json, then boots', async () => {
    const result = await lab.boot({
      kernel: fixture.vmlinuz,
      initrd,
      nic: 'e1000',
      mac: E1000_MAC,
      append: cmdline(`BOOTIF=01-${hyphens(E1000_MAC)} netboot.image=img1 netboot.verify`),
      timeoutMs: BOOT_TIMEOUT,
    });
    expect(result.console, result.console.slice(-3000)).toMatch(/NETBOOT-TEST-UP hostname=vm-e1000 /);
    expect(result.console).toMatch(/netboot: sha256 ok/);
    expect(result.console).toMatch(/modules loaded:.* e1000/);
    expect(phasesOf(lab.events, hyphens(E1000_MAC))).toEqual(['init', 'net', 'layer', 'rootfs', 'switch_root', 'up']);
  }, BOOT_TIMEOUT + 10_000);

  describe('failures: one clear line, `failed` reported, then reboot', () => {
    const bootToFailure = async (append: string, memoryMb?: number) => {
      const before = lab.events.length;
      const result = await lab.boot({ kernel: fixture.vmlinuz, initrd, nic: 'virtio-net-pci', mac: FAIL_MAC, append: cmdline(append), memoryMb, timeoutMs: BOOT_TIMEOUT });
      // netboot.reboot=0 + -no-reboot: the reboot after the failure ends QEMU.
      expect(result.exitCode, result.console.slice(-3000)).toBe(0);
      expect(result.console).not.toMatch(/Kernel panic/);
      expect(result.console).not.toMatch(/NETBOOT-TEST-UP/);
      return { result, lines: failedLine(result.console), events: lab.events.slice(before).filter((e) => e.mac === hyphens(FAIL_MAC)) };
    };

    it('rootfs URL 404', async () => {
      const { lines, events } = await bootToFailure(`netboot.mac=${FAIL_MAC} netboot.image=norootfs`);
      expect(lines).toEqual([`netboot: FAILED at rootfs: ${lab.serverUrl}/images/norootfs/rootfs.squashfs?mac=${FAIL_MAC_HYPHENS}: wget: server returned error: HTTP/1.1 404 Not Found`]);
      expect(events.map((e) => e.phase)).toEqual(['init', 'net', 'layer', 'failed']);
      expect(events.at(-1)!.detail).toContain('404');
    }, BOOT_TIMEOUT + 10_000);

    it('truncated squashfs', async () => {
      const { lines, events } = await bootToFailure(`netboot.mac=${FAIL_MAC} netboot.image=trunc`);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(
        new RegExp(`^netboot: FAILED at rootfs: ${lab.serverUrl}/images/trunc/rootfs.squashfs\\?mac=${FAIL_MAC_HYPHENS}: truncated squashfs: superblock says \\d+ bytes, file has ${Math.floor(squashfsSize / 2)}$`),
      );
      expect(events.map((e) => e.phase)).toEqual(['init', 'net', 'layer', 'failed']);
    }, BOOT_TIMEOUT + 10_000);

    it('too little RAM for the image suggests netboot.root=nbd', async () => {
      const { lines, events } = await bootToFailure(`netboot.mac=${FAIL_MAC} netboot.image=img1`, 192);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^netboot: FAILED at rootfs: \S+\/images\/img1\/rootfs.squashfs\?mac=[0-9a-f-]{17}: image is 75 MiB but only \d+ MiB of RAM is available .*netboot.root=nbd/);
      expect(events.map((e) => e.phase)).toEqual(['init', 'net', 'layer', 'failed']);
    }, BOOT_TIMEOUT + 10_000);

    it('netboot.debug opens a shell on the console instead of rebooting', async () => {
      const result = await lab.boot({
        kernel: fixture.vmlinuz,
        initrd,
        nic: 'virtio-net-pci',
        mac: FAIL_MAC,
        append: cmdline(`netboot.mac=${FAIL_MAC} netboot.image=missing netboot.debug`),
        type: [{ when: /starting a shell on the console/, text: 'echo DEBUG-SHELL-$((6*7)) $(cat /proc/1/comm); reboot -f\n' }],
        timeoutMs: BOOT_TIMEOUT,
      });
      expect(result.exitCode, result.console.slice(-3000)).toBe(0);
      expect(failedLine(result.console)).toHaveLength(1);
      expect(result.console).not.toMatch(/rebooting in/);
      expect(result.console).toMatch(/DEBUG-SHELL-42 init/);
    }, BOOT_TIMEOUT + 10_000);

    it('server unreachable: fails at the layer step naming the URL (no events can arrive)', async () => {
      const absent = `http://${lab.segment.subnet}.2:8080`;
      const before = lab.events.length;
      const result = await lab.boot({
        kernel: fixture.vmlinuz,
        initrd,
        nic: 'virtio-net-pci',
        mac: FAIL_MAC,
        append: `console=ttyS0 netboot.server=${absent} netboot.mac=${FAIL_MAC} netboot.image=img1 netboot.reboot=0`,
        timeoutMs: BOOT_TIMEOUT,
      });
      expect(result.exitCode, result.console.slice(-3000)).toBe(0);
      expect(failedLine(result.console)).toEqual([
        expect.stringMatching(new RegExp(`^netboot: FAILED at layer: ${absent}/machines/${hyphens(FAIL_MAC)}/layer: wget: can't connect to remote host`)),
      ]);
      expect(lab.events.length).toBe(before);
    }, BOOT_TIMEOUT + 10_000);
  });
});
