import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Image } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { silentLogger } from '../log.ts';
import { readSquashfsFile } from '../images/squashfs-reader.ts';
import { buildInitrd, type InitrdBuild, type InitrdSources } from './build.ts';
import { canonicalModuleName } from './modules.ts';
import { findBusybox, isHostPlatform } from './busybox.ts';

export { buildInitrd, initrdBuilderFingerprint, INITRD_BUILDER_VERSION, BASE_MODULES, DEFAULT_NIC_MODULES, BOOT_ASSETS_DIR } from './build.ts';
export type { InitrdBuild, InitrdSources, InitrdCompression } from './build.ts';
export { ModuleIndex, decompressModule, moduleRefFromPath, canonicalModuleName } from './modules.ts';
export type { ModuleRef, ModuleCompression, ModuleAlias } from './modules.ts';
export { writeCpio } from './cpio.ts';
export { busyboxPath, findBusybox, debianArch, isHostPlatform, appletNamesFromBinary, NETBOOT_SHARE_DIR } from './busybox.ts';
export type { CpioEntry } from './cpio.ts';

export interface MakeInitrdOptions {
  /** The image's rootfs.squashfs: kernel modules and config are read from it. */
  squashfs: string;
  kernelVersion: string;
  image: Image;
  outDir: string;
  log?: Logger;
  /** Passed to buildInitrd (e.g. nbd-client and its libraries for netboot.root=nbd). */
  extraFiles?: InitrdSources['extraFiles'];
}

export type InitrdInfo = Omit<InitrdBuild, 'image'> & { path: string; size: number };

/**
 * The image pipeline's hook (`BuildOptions.makeInitrd`): writes `<outDir>/initrd.img` (our
 * /init, busybox, the image's own kernel modules) atomically (temp file + rename).
 */
export async function makeInitrd(options: MakeInitrdOptions): Promise<void> {
  await writeInitrd(options);
}

/** makeInitrd that also says what it shipped (modules, compression, size). */
export async function writeInitrd({ squashfs, kernelVersion, image, outDir, log = silentLogger, extraFiles }: MakeInitrdOptions): Promise<InitrdInfo> {
  if (image.root === 'nbd' && !isHostPlatform(image.platform)) {
    // The NBD client is compiled with the host's C compiler: it would not run on the image's CPU.
    throw new Error(`image ${image.name}: root: nbd needs the initramfs NBD client built for ${image.platform}; only the host's architecture is supported for nbd, use root: ram`);
  }
  const build = await buildInitrd({
    busybox: await findBusybox(image.platform),
    readImageFile: (path) => readSquashfsFile(squashfs, path),
    kernelVersion,
    nics: image.nics,
    extraFiles,
  });
  if (image.nics?.length && image.nics.every((name) => build.unavailable.includes(canonicalModuleName(name)))) {
    throw new Error(`none of the NIC drivers configured for image ${image.name} (${image.nics.join(', ')}) exist in kernel ${kernelVersion}: the initramfs could not bring up a network`);
  }
  const path = join(outDir, 'initrd.img');
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, build.image);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const { image: data, ...info } = build;
  log.info(
    { image: image.name, kernelVersion, compression: info.compression, size: data.length, modules: info.modules.length, unavailable: info.unavailable },
    'initramfs built',
  );
  if (image.nics) {
    const missing = image.nics.filter((name) => info.unavailable.includes(canonicalModuleName(name)));
    if (missing.length) log.warn({ image: image.name, missing }, 'configured NIC drivers not in this kernel');
  }
  return { ...info, path, size: data.length };
}
