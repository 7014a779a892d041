/**
 * The boot half of bench/nbd (issue 8): the same Docker image booted with its root in RAM
 * (`root: ram`, the whole squashfs downloaded by /init) and streamed over NBD (`root: nbd`),
 * in one lab, by one server, alternating, with the e2e suite's machinery (server/lab, the
 * test fixtures' images, the shared artifact cache). Per boot: seconds from QEMU's start to
 * the kernel running /init, to /init's switch_root, and to the image's marker line; bytes the
 * server sent (kernel, initrd, layer, root). Medians and nbd/ram ratios against the targets
 * (nbd boot <= 0.9x ram boot, <= 10% of the image read).
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { buildImage } from '../../server/app/images.ts';
import { parseConfig } from '../../server/config/load.ts';
import { ImageCache } from '../../server/images/cache.ts';
import { Lab } from '../../server/lab/lab.ts';
import { silentLogger } from '../../server/log.ts';
import { FIXTURE_DIR } from '../../test/fixtures/cache.ts';
import { busyboxImage, e2eImage } from '../../test/fixtures/images/e2e.ts';
import { startDockerd, type Dockerd } from '../../test/lab/dockerd.ts';
import { httpBytesByPhase, nbdBytesRead, type TimelinePhase } from './boot-bytes.ts';
import { cleanupOnInterrupt } from './interrupt.ts';
import { parseSerialLog, secondsTo } from './serial-log.ts';

export type ImageKind = 'debian' | 'busybox';
/** disk: a `root: ram` image with `disk: { cache: true }` on a machine with a virtio disk; measured from its second boot (the first fills the cache). */
export type RootMode = 'ram' | 'nbd' | 'disk';
const DEFAULT_MODES: readonly RootMode[] = ['ram', 'nbd'];
const DISK_MIB = 2048;

export interface BootCompareOptions {
  /** Boots per image and mode; ram and nbd alternate (ABBA order across rounds). */
  rounds: number;
  /** debian: the e2e suite's systemd image (the realistic case); busybox: its tiny one. */
  images: readonly ImageKind[];
  /** Default ram and nbd. */
  modes?: readonly RootMode[];
  /** Printed first in the report (which bench ran this). */
  title?: string;
}

/** The e2e images' marker: systemd's multi-user reached (debian), or the busybox init's line. */
const MARKER = /NETBOOT-E2E-UP hostname=\S* image=\S* root=\S* extra=\S* addr=\S*\r?\n/;
/** Console lines the timings are taken at (see boot-assets/init and the kernel's own line). */
const KERNEL_RUNS_INIT = /Run \/init as init process/;
const SWITCH_ROOT = /netboot: switch_root into /;
const USERSPACE_UP = /NETBOOT-E2E-UP /;
const BOOT_TIMEOUT_MS = 300_000;
/** Artifacts are content-addressed: the e2e suite's cache serves the benchmark too. */
const CACHE_DIR = join(FIXTURE_DIR, 'e2e-cache');
/** A /24 no e2e test uses (each lab has its own namespace anyway). */
const SUBNET = 209;

interface BootResult {
  image: ImageKind;
  mode: RootMode;
  round: number;
  /** Seconds from QEMU's start. */
  kernelRunsInit: number | null;
  switchRoot: number | null;
  up: number;
  kernelBytes: number;
  initrdBytes: number;
  layerBytes: number;
  rootBytes: number;
}

interface ImageFacts {
  id: string;
  squashfsBytes: number;
}

interface ImageView {
  name: string;
  currentId: string | null;
  state: string;
  artifacts: Record<string, { size: number }>;
}

function entryName(image: ImageKind, mode: RootMode): string {
  return `${image}-${mode}`;
}

/** One machine per image and mode: 52:54:00:b8:<image>:<mode>. */
function macOf(image: ImageKind, mode: RootMode): string {
  return `52:54:00:b8:0${image === 'debian' ? 1 : 2}:0${{ ram: 1, nbd: 2, disk: 3 }[mode]}`;
}

export async function runBootComparison(options: BootCompareOptions): Promise<void> {
  const logDir = await mkdtemp(join(tmpdir(), 'bench-nbd-boot-'));
  const workDir = await mkdtemp(join(tmpdir(), 'bench-nbd-boot-config-'));
  let dockerd: Dockerd | null = null;
  let lab: Lab | null = null;
  const cleanup = async () => {
    await lab?.close().catch(() => undefined);
    lab = null;
    await dockerd?.stop().catch(() => undefined);
    dockerd = null;
    await rm(workDir, { recursive: true, force: true });
  };
  const unregister = cleanupOnInterrupt(cleanup);
  const loadAtStart = readLoadAverage();
  try {
    process.stderr.write(`bench/nbd boot: VM consoles and server log in ${logDir}\n`);
    dockerd = await startDockerd();
    const refs: Record<ImageKind, string> = {} as Record<ImageKind, string>;
    for (const image of options.images) refs[image] = image === 'debian' ? await e2eImage(dockerd) : await busyboxImage(dockerd);

    const images: Record<string, Record<string, unknown>> = {};
    const machines: Record<string, Record<string, unknown>> = {};
    const MODES = options.modes ?? DEFAULT_MODES;
    const disks: Record<string, string> = {};
    for (const image of options.images) {
      for (const mode of MODES) {
        const root = mode === 'nbd' ? 'nbd' : 'ram';
        images[entryName(image, mode)] = { source: `docker:${refs[image]}`, cmdline: 'console=ttyS0', root, ...(mode === 'disk' ? { disk: { cache: true } } : {}) };
        machines[macOf(image, mode)] = { hostname: `bench-${image}-${mode}`, image: entryName(image, mode), ...(mode === 'disk' ? { disk: { init: true } } : {}) };
        if (mode === 'disk') {
          disks[macOf(image, mode)] = join(workDir, `disk-${image}.img`);
          await writeFile(disks[macOf(image, mode)]!, '');
          await truncate(disks[macOf(image, mode)]!, DISK_MIB * 2 ** 20);
        }
      }
    }
    // Built (or found in the cache) before the lab starts, as the e2e suite does: the server then starts ready.
    const cache = new ImageCache({ cacheDir: CACHE_DIR, log: silentLogger });
    const parsed = parseConfig(stringify({ images }), '/virtual/netboot.yaml');
    for (const name of Object.keys(images)) {
      process.stderr.write(`bench/nbd boot: building ${name} (cached after the first time)\n`);
      await buildImage(cache, parsed.images.get(name)!, silentLogger, { docker: dockerd.docker });
    }

    const configFile = join(workDir, 'netboot.yaml');
    await writeFile(
      configFile,
      stringify({
        server: {
          address: `10.77.${SUBNET}.1`,
          httpPort: 8080,
          dhcp: { mode: 'proxy' },
          stateDir: join(workDir, 'state'),
          cacheDir: CACHE_DIR,
          rebootDelay: 0,
          // No image re-checks against the engine while VMs boot: they would only add noise.
          imageCheckSeconds: 3600,
        },
        images,
        machines,
        defaults: { image: entryName(options.images[0]!, 'ram'), unknown: 'deny' },
      }),
    );
    lab = await Lab.start({ configFile, logDir, env: { DOCKER_HOST: dockerd.host } });
    const facts = await imageFacts(lab, Object.keys(images));

    const results: BootResult[] = [];
    // Round 0: a disk machine's first boot prepares its disk and fills the cache (reported, not in the medians).
    for (const image of options.images) {
      if (!MODES.includes('disk')) break;
      const result = await bootOnce(lab, image, 'disk', 0, facts[entryName(image, 'disk')]!, disks);
      results.push(result);
      process.stderr.write(`bench/nbd boot: ${image} disk first boot (fills the cache): up at ${result.up.toFixed(1)} s, root ${mib(result.rootBytes)} MiB\n`);
    }
    for (let round = 1; round <= options.rounds; round++) {
      // ABBA: whatever drifts during the run (other engineers' load) hits both modes alike.
      const order = round % 2 === 1 ? MODES : [...MODES].reverse();
      for (const image of options.images) {
        for (const mode of order) {
          const result = await bootOnce(lab, image, mode, round, facts[entryName(image, mode)]!, disks);
          results.push(result);
          process.stderr.write(
            `bench/nbd boot: ${image} ${mode} round ${round}: up at ${result.up.toFixed(1)} s, root ${mib(result.rootBytes)} MiB\n`,
          );
        }
      }
    }
    await lab.close();
    lab = null;
    printReport(results, options, MODES, facts, loadAtStart);
    process.stdout.write(`VM consoles and the server log: ${logDir}\n`);
  } finally {
    await cleanup();
    unregister();
  }
}

/** Ids and squashfs sizes of the lab's images, once its server reports them ready. */
async function imageFacts(lab: Lab, names: string[]): Promise<Record<string, ImageFacts>> {
  const deadline = Date.now() + 600_000;
  for (;;) {
    const { images } = await lab.api<{ images: ImageView[] }>('/api/images');
    const ready = images.filter((i) => names.includes(i.name) && i.state === 'ready' && i.currentId);
    if (ready.length === names.length) {
      return Object.fromEntries(ready.map((i) => [i.name, { id: i.currentId!, squashfsBytes: i.artifacts['rootfs.squashfs']!.size }]));
    }
    if (Date.now() > deadline) throw new Error(`images not ready: ${JSON.stringify(images.map((i) => [i.name, i.state]))}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function nbdBytes(lab: Lab, exportId: string): Promise<number> {
  const { stdout } = await lab.segment.exec('curl', ['-sf', '-m', '10', `${lab.baseUrl}/metrics`]);
  return nbdBytesRead(stdout, exportId);
}

async function bootOnce(lab: Lab, image: ImageKind, mode: RootMode, round: number, facts: ImageFacts, disks: Record<string, string>): Promise<BootResult> {
  const mac = macOf(image, mode);
  const disk = disks[mac];
  const nbdBefore = mode === 'nbd' ? await nbdBytes(lab, facts.id) : 0;
  // Short names: the VM's tap is `tap-<name>`, at most 15 characters.
  const vm = await lab.bootVm({ name: `${image === 'debian' ? 'deb' : 'bb'}-${mode}-${round}`, mac, ...(disk ? { disks: [disk] } : {}) });
  let phases: TimelinePhase[];
  let nbdAfter = 0;
  try {
    await vm.waitFor(MARKER, BOOT_TIMEOUT_MS);
    // Read at the marker: systemd keeps reading blocks afterwards, but userspace is up.
    if (mode === 'nbd') nbdAfter = await nbdBytes(lab, facts.id);
    const summary = await lab.api<{ lastBoot: { imageId?: string; phases: TimelinePhase[] } | null }>(`/api/machines/${mac.replace(/:/g, '-')}`);
    if (summary.lastBoot?.imageId !== facts.id) throw new Error(`${mac}: last boot is of ${summary.lastBoot?.imageId}, expected ${facts.id}`);
    phases = summary.lastBoot.phases;
  } finally {
    await vm.stop();
  }
  const lines = parseSerialLog(await readFile(vm.logPath, 'latin1'));
  const up = secondsTo(lines, USERSPACE_UP);
  if (up === null) throw new Error(`${vm.logPath}: no marker line in the log although the console printed it`);
  const http = httpBytesByPhase(phases);
  return {
    image,
    mode,
    round,
    kernelRunsInit: secondsTo(lines, KERNEL_RUNS_INIT),
    switchRoot: secondsTo(lines, SWITCH_ROOT),
    up,
    kernelBytes: http.kernel,
    initrdBytes: http.initrd,
    layerBytes: http.layer,
    rootBytes: mode === 'nbd' ? nbdAfter - nbdBefore : http.rootfs,
  };
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
const sec = (s: number | null) => (s === null ? '-' : s.toFixed(1));
const between = (from: number | null, to: number | null) => (from === null || to === null ? null : to - from);
const totalBytes = (r: BootResult) => r.kernelBytes + r.initrdBytes + r.layerBytes + r.rootBytes;

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

function printReport(results: BootResult[], options: BootCompareOptions, modes: readonly RootMode[], facts: Record<string, ImageFacts>, loadAtStart: string): void {
  const out: string[] = [];
  out.push(`\n${options.title ?? 'bench/nbd boot'}: ${modes.join(' vs ')} root, ${options.rounds} alternating round(s) per image, QEMU TCG, 1024 MiB RAM, virtio-net, BIOS iPXE, proxyDHCP lab`);
  if (modes.includes('disk')) out.push(`disk: root: ram with disk: { cache: true } on a ${DISK_MIB} MiB virtio disk; round 0 is its first boot (prepares the disk, fills the cache), not in the medians`);
  out.push('times are seconds from QEMU start: kernel runs /init, /init switch_roots into the image, image marker (systemd: multi-user reached)\n');
  out.push(
    table(
      ['image', 'mode', 'round', '/init s', 'switch_root s', 'up s', 'kernel MiB', 'initrd MiB', 'layer KiB', 'root MiB', 'root % of image', 'total MiB'],
      results.map((r) => {
        const image = facts[entryName(r.image, r.mode)]!;
        return [
          r.image,
          r.mode,
          String(r.round),
          sec(r.kernelRunsInit),
          sec(r.switchRoot),
          sec(r.up),
          mib(r.kernelBytes),
          mib(r.initrdBytes),
          (r.layerBytes / 1024).toFixed(1),
          mib(r.rootBytes),
          ((100 * r.rootBytes) / image.squashfsBytes).toFixed(1),
          mib(totalBytes(r)),
        ];
      }),
    ),
  );
  for (const image of options.images) {
    const of = (mode: RootMode) => results.filter((r) => r.image === image && r.mode === mode && r.round > 0);
    const squashfs = facts[entryName(image, modes[0]!)]!.squashfsBytes;
    const others = modes.filter((mode) => mode !== 'ram');
    const metric = (name: string, value: (r: BootResult) => number | null, format: (x: number) => string, target = '') => {
      const m = (mode: RootMode) => {
        const values = of(mode).map(value).filter((v): v is number => v !== null);
        return values.length ? median(values) : null;
      };
      const ram = m('ram');
      const cells = modes.map((mode) => m(mode)).map((v) => (v === null ? '-' : format(v)));
      const ratios = others.map((mode) => {
        const v = m(mode);
        return ram && v !== null ? `${(v / ram).toFixed(2)}x` : '-';
      });
      return [name, ...cells, ...ratios, target];
    };
    out.push(`\n${image}: ${modes.map((mode) => `${facts[entryName(image, mode)]!.id} (${mode})`).join(' / ')}, squashfs ${mib(squashfs)} MiB; medians of rounds >= 1\n`);
    out.push(
      table(
        ['metric', ...modes, ...others.map((mode) => `${mode}/ram`), 'target'],
        [
          metric('kernel runs /init (s)', (r) => r.kernelRunsInit, (x) => x.toFixed(1)),
          metric('switch_root into the image (s)', (r) => r.switchRoot, (x) => x.toFixed(1)),
          metric('userspace marker (s)', (r) => r.up, (x) => x.toFixed(1), 'nbd <= 0.90x'),
          metric('  /init until switch_root (s)', (r) => between(r.kernelRunsInit, r.switchRoot), (x) => x.toFixed(1)),
          metric('  switch_root until marker (s)', (r) => between(r.switchRoot, r.up), (x) => x.toFixed(1)),
          metric('kernel + initrd (MiB)', (r) => r.kernelBytes + r.initrdBytes, mib),
          metric('root (MiB)', (r) => r.rootBytes, mib),
          metric('root (% of the image)', (r) => (100 * r.rootBytes) / squashfs, (x) => x.toFixed(1), 'nbd <= 10%'),
          metric('total sent (MiB)', totalBytes, mib),
        ],
      ),
    );
  }
  out.push(`\nroot bytes: ram and disk = the rootfs downloads in the boot timeline; nbd = netboot_nbd_bytes_total for the export, from VM start to the marker`);
  out.push(`load average at the start: ${loadAtStart}, at the end: ${readLoadAverage()} (2 cores shared with other engineers; times are noisy under load, bytes are not)`);
  process.stdout.write(`${out.join('\n')}\n`);
}

function readLoadAverage(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}
