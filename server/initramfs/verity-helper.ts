/**
 * `netboot-verity` (native/verity/netboot-verity.c) for the initramfs: it maps a root kept in
 * a machine's disk cache through dm-verity, so the kernel checks each block read against the
 * manifest's root hash (disk.sh). Built for the host's architecture only: an initramfs for
 * another one goes without it, and its machines check the cached copy's whole sha256 instead.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { platformArchitecture } from '../images/kernel-arch.ts';
import { compileStaticTool, staticToolFile, staticToolFingerprint, type InitramfsFile } from './static-tool.ts';

export const VERITY_HELPER_SOURCE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'native', 'verity', 'netboot-verity.c');
/** Where /init finds it (on PATH). */
export const VERITY_HELPER_PATH = 'bin/netboot-verity';

const HOST_ARCHITECTURE: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', riscv64: 'riscv64', ppc64: 'ppc64le', s390x: 's390x' };

/** True when images of this platform (linux/amd64, ...) get the helper: the host compiles it natively. */
export function verityHelperFor(platform: string): boolean {
  return platformArchitecture(platform) === HOST_ARCHITECTURE[process.arch];
}

export function verityHelperFingerprint(source = VERITY_HELPER_SOURCE): Promise<string> {
  return staticToolFingerprint(source);
}

const VERITY_HELPER_WHAT = 'the initramfs dm-verity helper';

/** Path of the compiled helper, compiling it first if this source version has not been. */
export function compileVerityHelper(source = VERITY_HELPER_SOURCE): Promise<string> {
  return compileStaticTool(source, VERITY_HELPER_WHAT);
}

export async function verityHelperFiles(source = VERITY_HELPER_SOURCE): Promise<InitramfsFile[]> {
  return [await staticToolFile(source, VERITY_HELPER_PATH, VERITY_HELPER_WHAT)];
}
