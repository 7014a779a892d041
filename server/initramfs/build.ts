import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { atBulkPriority } from '../threads/priority.ts';
import { writeCpio, type CpioEntry } from './cpio.ts';
import { appletNamesFromBinary } from './busybox.ts';
import { canonicalModuleName, decompressModule, ModuleIndex, type ModuleRef } from './modules.ts';

const run = promisify(execFile);

/** boot-assets/ of this checkout: /init and the files under boot-assets/initramfs/ (copied to / of the initrd). */
export const BOOT_ASSETS_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'boot-assets');

/**
 * For machines with a disk (config `disk:`, boot-assets/initramfs/lib/netboot/disk.sh): its
 * filesystem, common disk controllers, and dm_verity (with dm_mod, dm_bufio), through which
 * netboot-verity maps the cached root, with the CPU's sha256 (SHA-NI/AVX2 on x86, the ARMv8
 * crypto extensions on arm64: several times the generic code's speed for every block read).
 */
export const DISK_MODULES = ['ext4', 'crc32c_generic', 'crc32c_intel', 'dm_verity', 'sha256_ssse3', 'sha2_ce', 'virtio_blk', 'virtio_scsi', 'sd_mod', 'ahci', 'ata_piix', 'nvme'];
/** Modules /init needs for the root filesystem, whatever the hardware. */
export const BASE_MODULES = ['af_packet', 'squashfs', 'overlay', 'loop', 'nbd', ...DISK_MODULES];

/**
 * NIC drivers shipped when the image does not name its own: VMs (virtio needs its PCI
 * transport too, which is not a modules.dep dependency of virtio_net) and common lab hardware.
 * Names the kernel lacks are skipped.
 */
export const DEFAULT_NIC_MODULES = [
  'virtio_pci',
  'virtio_net',
  'e1000',
  'e1000e',
  'igb',
  'igc',
  'ixgbe',
  'ixgbevf',
  'i40e',
  'iavf',
  'ice',
  'r8169',
  'tg3',
  'bnx2',
  'bnx2x',
  'bnxt_en',
  'mlx4_en',
  'mlx5_core',
  'atlantic',
  'be2net',
  'qede',
  'sfc',
  'vmxnet3',
  'ena',
  'gve',
  'hv_vmbus',
  'hv_netvsc',
  'xen_netfront',
  'forcedeth',
  'r8152',
  'cdc_ether',
  'ax88179_178a',
  'usbnet',
];

export type InitrdCompression = 'gzip' | 'zstd';

export interface InitrdSources {
  /** Reads an absolute path of the image's root filesystem; rejects when missing. */
  readImageFile: (path: string) => Promise<Buffer>;
  kernelVersion: string;
  /** NIC driver modules; default DEFAULT_NIC_MODULES. */
  nics?: readonly string[];
  /** Static busybox for the image's architecture (busybox.ts findBusybox). Default /bin/busybox (the host's busybox-static). */
  busybox?: string;
  assetsDir?: string;
  /** Default: from the kernel config (zstd when CONFIG_RD_ZSTD=y, else gzip). */
  compression?: InitrdCompression;
  /** More regular files, e.g. nbd-client and its libraries (nbdClientFiles()); paths relative to /. */
  extraFiles?: readonly { path: string; mode: number; data: Buffer }[];
}

export interface InitrdBuild {
  image: Buffer;
  compression: InitrdCompression;
  /** Module names shipped, in load order. */
  modules: string[];
  /** Requested NIC/base modules the kernel has built in (nothing to ship). */
  builtin: string[];
  /** Requested names this kernel knows neither as module nor built in. */
  unavailable: string[];
  cpioSize: number;
}

/** The kernel's config text from the image (/boot/config-<kver> or the modules directory), or null. */
export async function readKernelConfig(readImageFile: (path: string) => Promise<Buffer>, kver: string): Promise<string | null> {
  for (const path of [`/boot/config-${kver}`, `/usr/lib/modules/${kver}/config`, `/lib/modules/${kver}/config`]) {
    const data = await readImageFile(path).catch(() => null);
    if (data) return data.toString('utf8');
  }
  return null;
}

export function compressionForKernelConfig(config: string | null): InitrdCompression {
  return config !== null && /^CONFIG_RD_ZSTD=y$/m.test(config) ? 'zstd' : 'gzip';
}

/** Applet names for the /bin symlinks: from the binary's name table, else (a busybox laid out differently) by running it. */
async function applets(busybox: string, binary: Buffer): Promise<string[]> {
  const fromTable = appletNamesFromBinary(binary);
  const names = fromTable ?? (await run(busybox, ['--list'])).stdout.split('\n').map((name) => name.trim());
  return names.filter((name) => /^[A-Za-z0-9._[\]-]+$/.test(name) && name !== 'busybox').sort();
}

async function walkFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await walkFiles(full)));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

/** /init plus everything under boot-assets/initramfs/, keeping the executable bit. */
async function assetEntries(assetsDir: string): Promise<CpioEntry[]> {
  const entries: CpioEntry[] = [];
  const asset = async (file: string, path: string) => {
    const info = await stat(file);
    entries.push({ type: 'file', path, data: await readFile(file), mode: info.mode & 0o111 ? 0o755 : 0o644 });
  };
  await asset(join(assetsDir, 'init'), 'init');
  const tree = join(assetsDir, 'initramfs');
  for (const file of await walkFiles(tree)) await asset(file, relative(tree, file));
  return entries;
}

async function compress(data: Buffer, compression: InitrdCompression): Promise<Buffer> {
  // Levels chosen for build time: zstd -5 takes ~1 s on a 25 MB cpio, -15 took 14 s for 10% less.
  if (compression === 'gzip') return gzipSync(data, { level: 6 });
  return new Promise((resolve, reject) => {
    // Single-threaded so the output does not depend on the number of cores.
    const child = atBulkPriority(() =>
      execFile('zstd', ['-q', '-c', '-5', '-T1'], { encoding: 'buffer', maxBuffer: 1 << 30 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`zstd failed: ${stderr.toString().trim() || err.message}`));
        else resolve(stdout);
      }),
    );
    child.stdin?.end(data);
  });
}

/** `fn` over `items` with at most `limit` running at once; results in input order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Bumped when the builder's output changes for the same inputs (layout, compression level). */
export const INITRD_BUILDER_VERSION = 2;

/**
 * A digest of everything besides the image that goes into an initrd: builder version,
 * module lists, busybox, /init and its helpers. Pass it as the image pipeline's
 * `extraInputs` so an edited /init gives new image ids instead of stale cached initrds.
 */
export async function initrdBuilderFingerprint(busybox = '/bin/busybox', assetsDir = BOOT_ASSETS_DIR): Promise<string> {
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ INITRD_BUILDER_VERSION, BASE_MODULES, DEFAULT_NIC_MODULES }));
  hash.update(await readFile(busybox));
  for (const entry of (await assetEntries(assetsDir)).sort((a, b) => (a.path < b.path ? -1 : 1))) {
    if (entry.type !== 'file') continue;
    hash.update(`\0${entry.path}\0${entry.mode ?? 0}\0${entry.data.length}\0`).update(entry.data);
  }
  return hash.digest('hex').slice(0, 16);
}

/** Builds the compressed initramfs from an image's kernel modules, busybox and boot-assets. */
export async function buildInitrd(sources: InitrdSources): Promise<InitrdBuild> {
  const kver = sources.kernelVersion;
  const busybox = sources.busybox ?? '/bin/busybox';
  const index = await ModuleIndex.load(sources.readImageFile, kver);
  const compression =
    sources.compression ?? compressionForKernelConfig(await readKernelConfig(sources.readImageFile, kver));

  const wanted = [...new Set([...BASE_MODULES, ...(sources.nics ?? DEFAULT_NIC_MODULES)].map(canonicalModuleName))];
  const builtin = wanted.filter((name) => index.has(name) === 'builtin');
  const unavailable = wanted.filter((name) => index.has(name) === null);
  // A disk module whose files (or a dependency's) the image left out is skipped, not fatal: a
  // slimmed image that dropped drivers/scsi still builds, its machines just boot diskless.
  const optional = new Set(DISK_MODULES.map(canonicalModuleName));
  const unreadable = new Map<string, Error>();
  const readModule = async (ref: ModuleRef): Promise<Buffer | null> =>
    sources.readImageFile(`${index.dir}/${ref.path}`).catch((err: Error) => {
      unreadable.set(ref.name, new Error(`module ${ref.name} listed in ${index.dir}/modules.dep but unreadable (${ref.path}): ${err.message}`));
      return null;
    });
  const everything = index.closure(wanted);
  const rawModules = new Map((await mapLimit(everything, 4, readModule)).map((raw, i) => [everything[i]!.name, raw] as const));
  const complete = (name: string) => index.closure([name]).every((ref) => !unreadable.has(ref.name));
  const dropped = wanted.filter((name) => optional.has(name) && !complete(name));
  const kept = wanted.filter((name) => !dropped.includes(name));
  const missing = index.closure(kept).find((ref) => unreadable.has(ref.name));
  if (missing) throw unreadable.get(missing.name)!;
  unavailable.push(...dropped);
  const refs: ModuleRef[] = index.closure(kept);
  const busyboxBinary = await readFile(busybox);

  const entries: CpioEntry[] = [
    { type: 'dir', path: 'dev' },
    // The kernel opens /dev/console for init's stdio before anything mounts devtmpfs.
    { type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'dir', path: 'proc', mode: 0o555 },
    { type: 'dir', path: 'sys', mode: 0o555 },
    { type: 'dir', path: 'run' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'newroot' },
    { type: 'dir', path: 'etc' },
    { type: 'symlink', path: 'sbin', target: 'bin' },
    { type: 'symlink', path: 'usr/bin', target: '../bin' },
    { type: 'symlink', path: 'usr/sbin', target: '../bin' },
    { type: 'file', path: 'bin/busybox', data: busyboxBinary, mode: 0o755 },
    ...(await applets(busybox, busyboxBinary)).map((name): CpioEntry => ({ type: 'symlink', path: `bin/${name}`, target: 'busybox' })),
    ...(await assetEntries(sources.assetsDir ?? BOOT_ASSETS_DIR)),
    ...(sources.extraFiles ?? []).map((file): CpioEntry => ({ type: 'file', path: file.path, data: file.data, mode: file.mode & 0o7777 })),
  ];

  const modulesDir = `lib/modules/${kver}`;
  const moduleData = await mapLimit(refs, 4, async (ref) => decompressModule(rawModules.get(ref.name)!, ref.compression, `module ${ref.name} (${index.dir}/${ref.path})`));
  refs.forEach((ref, i) => entries.push({ type: 'file', path: `${modulesDir}/${ref.shippedPath}`, data: moduleData[i]! }));
  entries.push(
    { type: 'file', path: `${modulesDir}/modules.dep`, data: Buffer.from(index.trimmedDep(refs)) },
    { type: 'file', path: `${modulesDir}/modules.alias`, data: Buffer.from(index.trimmedAlias(refs)) },
  );

  const cpio = writeCpio(entries);
  return {
    image: await compress(cpio, compression),
    compression,
    modules: refs.map((ref) => ref.name),
    builtin,
    unavailable,
    cpioSize: cpio.length,
  };
}
