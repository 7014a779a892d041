/**
 * The initramfs's NBD client for `root: nbd`: our own `netboot-nbd`
 * (native/nbd-client/netboot-nbd.c), compiled here once per source version into a static
 * binary (no libraries to carry: 0.7 MB instead of Debian's nbd-client with its libraries,
 * 5.3 MB). It uses the kernel's netlink interface with a dead-connection timeout and
 * reconnects when the link dies, so a server restart does not fail the machine's reads.
 *
 * Compiled by static-tool.ts.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileStaticTool, staticToolFile, staticToolFingerprint, type InitramfsFile } from './static-tool.ts';

export type { InitramfsFile } from './static-tool.ts';

export const NBD_CLIENT_SOURCE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'native', 'nbd-client', 'netboot-nbd.c');
/** Where /init finds it (on PATH). */
export const NBD_CLIENT_PATH = 'bin/netboot-nbd';
const NBD_CLIENT_WHAT = 'the initramfs NBD client';

/** Hash of what determines the binary: the source and the flags (part of image ids for `root: nbd`). */
export function nbdClientFingerprint(source = NBD_CLIENT_SOURCE): Promise<string> {
  return staticToolFingerprint(source);
}

/** Path of the compiled client, compiling it first if this source version has not been. */
export function compileNbdClient(source = NBD_CLIENT_SOURCE, outDir?: string): Promise<string> {
  return compileStaticTool(source, NBD_CLIENT_WHAT, outDir);
}

/** The files `root: nbd` adds to an initramfs: the static client at bin/netboot-nbd. */
export async function nbdClientFiles(source = NBD_CLIENT_SOURCE): Promise<InitramfsFile[]> {
  return [await staticToolFile(source, NBD_CLIENT_PATH, NBD_CLIENT_WHAT)];
}
