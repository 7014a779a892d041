import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildImage } from '../../server/app/images.ts';
import { parseConfig } from '../../server/config/load.ts';
import { ImageCache, type Manifest } from '../../server/images/cache.ts';
import { Lab } from '../../server/lab/lab.ts';
import { silentLogger } from '../../server/log.ts';
import { FIXTURE_DIR } from '../fixtures/cache.ts';
import { ARM64_INIT_PATH, ARM64_MARKER, debianArm64Archive } from './image.ts';

/**
 * arm64 end to end (issue 17): qemu-system-aarch64 (TCG) with Debian's AAVMF does real PXE
 * (DHCP arch 11 -> TFTP ipxe-arm64.efi), our arm64 iPXE fetches the machine script, boots the
 * arm64 Debian image's own kernel with our initramfs (arm64 busybox, the image's arm64
 * modules), and the image's init runs in the overlay root with the machine's top layer.
 * In the same lab an x86 machine given the same image gets the WRONG ARCHITECTURE message
 * from its real iPXE instead of a kernel it cannot run.
 *
 * Opt-in (NETBOOT_ARM64=1): the debootstrap --arch arm64 fixture takes ~15 min cold under
 * qemu-user, and one TCG arm64 boot takes minutes (see the README's arm64 figures).
 */
const ENABLED = process.env.NETBOOT_ARM64 === '1';
const CACHE_DIR = join(FIXTURE_DIR, 'arm64-cache');
const ARM_MAC = '52:54:00:a4:00:01';
const PC_MAC = '52:54:00:a4:00:02';
/** Only guards against a hang: a TCG arm64 boot on a loaded 2-core box takes minutes. */
const BOOT_TIMEOUT = 1_200_000;

interface Phase {
  phase: string;
  source: string;
  at: string;
  detail?: string;
  bytes?: number;
}

let archive: string;
let imageId: string;
let buildSeconds: number;
let dir: string;
let lab: Lab | undefined;

function imageConfig() {
  return { source: `oci-archive:${archive}`, platform: 'linux/arm64', cmdline: 'console=ttyAMA0', init: ARM64_INIT_PATH };
}

describe.skipIf(!ENABLED)('arm64 end to end (qemu-system-aarch64, TCG, AAVMF PXE)', () => {
  beforeAll(async () => {
    archive = await debianArm64Archive();
    const image = parseConfig(stringify({ images: { pi: imageConfig() } }), '/virtual/netboot.yaml').images.get('pi')!;
    const started = Date.now();
    const built = await buildImage(new ImageCache({ cacheDir: CACHE_DIR, log: silentLogger }), image, silentLogger);
    buildSeconds = (Date.now() - started) / 1000;
    imageId = built.id;
    dir = await mkdtemp(join(tmpdir(), 'netboot-arm64-'));
    process.stdout.write(`arm64 e2e: image ${imageId} ${built.cached ? 'cached' : `built in ${buildSeconds.toFixed(1)} s`}; logs in ${dir}/logs\n`);
  }, 3_600_000);

  afterAll(async () => {
    await lab?.close();
  });

  it('an arm64 machine boots the arm64 image to its userspace with its top layer; an x86 machine given it is told why not', async () => {
    const configFile = join(dir, 'netboot.yaml');
    await writeFile(
      configFile,
      stringify({
        server: { address: '10.88.76.1', httpPort: 8080, dhcp: { mode: 'proxy' }, stateDir: join(dir, 'state'), cacheDir: CACHE_DIR, rebootDelay: 0 },
        images: { pi: imageConfig() },
        machines: { [ARM_MAC]: { hostname: 'rack1', image: 'pi' }, [PC_MAC]: { hostname: 'desk1', image: 'pi' } },
        defaults: { unknown: 'deny' },
      }),
    );
    lab = await Lab.start({ configFile, logDir: join(dir, 'logs') });

    const manifest = JSON.parse((await lab.segment.exec('curl', ['-sf', `${lab.baseUrl}/images/${imageId}/manifest.json`])).stdout) as Manifest;
    expect(manifest).toMatchObject({ platform: 'linux/arm64', architecture: 'arm64' });

    const started = Date.now();
    const [arm, pc] = await Promise.all([
      lab.bootVm({ name: 'arm64vm', mac: ARM_MAC, arch: 'aarch64', firmware: 'uefi-pxe' }),
      lab.bootVm({ name: 'arm64pc', mac: PC_MAC, firmware: 'bios' }),
    ]);

    // The x86 machine: its iPXE (BIOS build, ${buildarch} i386) refuses before any kernel download.
    // iPXE's console wraps at 80 columns: the message is joined back before comparing.
    const refusal = await pc.waitFor(/netboot: WRONG ARCHITECTURE: ([\s\S]*?)\r?\nnetboot: its kernel cannot run here/, BOOT_TIMEOUT);
    expect(refusal[1]!.replace(/\r?\n/g, '')).toBe(`desk1 (${PC_MAC}) is a i386 machine, image pi is linux/arm64`);
    expect(pc.console).not.toMatch(/images\/[0-9a-f]+\/vmlinuz/);
    await pc.stop();

    const marker = await arm.waitFor(ARM64_MARKER, BOOT_TIMEOUT);
    const upSeconds = (Date.now() - started) / 1000;
    const [, hostname, cpu, bootedImage, root, uptime] = marker;
    expect({ hostname, cpu, bootedImage, root }).toEqual({ hostname: 'rack1', cpu: 'aarch64', bootedImage: imageId, root: 'overlay' });

    // Both architectures went through DHCP: arch 11 got the arm64 iPXE over TFTP.
    const summary = await lab.api<{ lastBoot: { phases: Phase[] } | null }>(`/api/machines/${ARM_MAC.replace(/:/g, '-')}`);
    const phases = summary.lastBoot?.phases ?? [];
    expect(phases.map((p) => p.phase)).toEqual(expect.arrayContaining(['kernel', 'initrd', 'init', 'net', 'layer', 'rootfs', 'switch_root']));
    expect(await lab.segment.exec('grep', ['-c', 'ipxe-arm64.efi', lab.serverLog]).then((r) => Number(r.stdout.trim()))).toBeGreaterThan(0);

    await arm.stop();
    const text = report(await readFile(arm.logPath, 'utf8'), phases, started, upSeconds, Number(uptime));
    process.stdout.write(text);
    await writeFile(join(dir, 'arm64-timing.txt'), text);
  }, BOOT_TIMEOUT * 2);
});

/** Console milestones of a PXE boot, in order: the first line matching each one. */
const MILESTONES: [string, RegExp][] = [
  ['firmware banner (AAVMF)', /UEFI firmware \(version/],
  ['firmware starts PXE', />>Start PXE over IPv4|Downloading NBP file/],
  ['iPXE downloaded (TFTP)', /NBP file downloaded successfully/],
  ['iPXE banner', /iPXE \d+\.\d+.* -- Open Source Network Boot Firmware/],
  ['iPXE configured net0', /Configuring \(net0 .*\)\.\.\. ok/],
  ['machine script fetched', /machines\/[0-9a-f-]+\/boot\.ipxe\.\.\. ok/],
  ['initrd downloaded', /\/initrd\.img\S*\.\.\. ok/],
  ['kernel entered (EFI stub)', /EFI stub: Booting Linux Kernel|Booting Linux on physical CPU/],
  ['kernel runs /init', /Run \/init as init process/],
  ['/init: network up', /netboot: DHCP: \S+ got/],
  ['/init: top layer unpacked', /netboot: layer: \d+ entries/],
  ['/init: rootfs downloaded, mounted', /netboot: rootfs: \S+ mounted read-only/],
  ['/init: switch_root', /netboot: switch_root into/],
  ["image's init runs", /NETBOOT-ARM64-UP/],
];

/** Where the time went: console milestones (seconds since QEMU started, from the VM log's stamps) and the server's timeline. */
function report(log: string, phases: Phase[], started: number, upSeconds: number, kernelUptime: number): string {
  const lines = [`arm64 boot: ${upSeconds.toFixed(1)} s from QEMU start to the image's init (kernel uptime then: ${kernelUptime.toFixed(1)} s)`, '  console:'];
  const stamped = log.split('\n').map((line) => /^\[\s*([\d.]+)\] (.*)$/.exec(line)).filter((m): m is RegExpExecArray => m !== null);
  let previous = 0;
  for (const [label, pattern] of MILESTONES) {
    const hit = stamped.find((m) => pattern.test(m[2]!));
    if (!hit) {
      lines.push(`    ${'-'.padStart(7)}    ${label}`);
      continue;
    }
    const at = Number(hit[1]);
    lines.push(`    ${at.toFixed(1).padStart(7)} s  ${label.padEnd(34)} +${(at - previous).toFixed(1)} s`);
    previous = at;
  }
  lines.push('  server timeline:');
  for (const p of phases) {
    lines.push(`    ${((Date.parse(p.at) - started) / 1000).toFixed(1).padStart(7)} s  ${p.phase.padEnd(12)} ${p.source.padEnd(6)} ${p.detail ?? ''}${p.bytes ? ` ${p.bytes} B` : ''}`);
  }
  return `${lines.join('\n')}\n`;
}
