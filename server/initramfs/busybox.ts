import { access } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Which static busybox goes into an image's initramfs. It must run on the image's
 * architecture, not the server's: the host's busybox-static serves images of the host's
 * architecture; for the other one, scripts/setup-host.sh unpacks Debian's busybox-static
 * for that architecture (pinned, checksum-checked, never installed) under NETBOOT_SHARE_DIR.
 */

/** Where setup-host.sh puts netboot's own copies of foreign binaries (iPXE, busybox). */
export const NETBOOT_SHARE_DIR = process.env.NETBOOT_SHARE_DIR ?? '/usr/local/share/netboot';

/** Image platform (OCI `os/arch[/variant]`) -> Debian architecture, for the platforms netboot boots. */
const PLATFORM_ARCH: Record<string, string> = { 'linux/amd64': 'amd64', 'linux/arm64': 'arm64', 'linux/arm64/v8': 'arm64' };
const NODE_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64' };

export class UnsupportedPlatformError extends Error {}

/** The Debian architecture of an image platform; throws for one netboot cannot boot. */
export function debianArch(platform: string): string {
  const arch = PLATFORM_ARCH[platform];
  if (!arch) throw new UnsupportedPlatformError(`platform ${platform} is not supported (netboot boots ${Object.keys(PLATFORM_ARCH).join(', ')})`);
  return arch;
}

/** True when binaries for `platform` run natively on this server. */
export function isHostPlatform(platform: string): boolean {
  return NODE_ARCH[process.arch] === debianArch(platform);
}

/** The busybox for `platform`: the host's /bin/busybox, or the one setup-host.sh unpacked for that architecture. */
export function busyboxPath(platform: string, shareDir = NETBOOT_SHARE_DIR): string {
  return isHostPlatform(platform) ? '/bin/busybox' : join(shareDir, 'busybox', debianArch(platform), 'busybox');
}

/** busyboxPath, checked to exist, with the fix in the error. */
export async function findBusybox(platform: string, shareDir = NETBOOT_SHARE_DIR): Promise<string> {
  const path = busyboxPath(platform, shareDir);
  try {
    await access(path);
  } catch {
    const pkg = isHostPlatform(platform) ? 'apt-get install busybox-static' : `run scripts/setup-host.sh as root (it unpacks Debian's busybox-static:${debianArch(platform)} there)`;
    throw new Error(`the initramfs for a ${platform} image needs a static busybox for ${debianArch(platform)} at ${path}, which is missing. Fix: ${pkg}`);
  }
  return path;
}

/**
 * busybox's applet names, read from the binary's packed name table ("[\0[[\0acpid\0..."): a
 * busybox of another architecture cannot be run here to ask `--list`. Null when the table is
 * not found (a build laid out differently): the caller then runs the binary.
 */
export function appletNamesFromBinary(binary: Buffer): string[] | null {
  const start = binary.indexOf(Buffer.from('\0[\0[[\0', 'latin1'));
  if (start < 0) return null;
  const names: string[] = [];
  let at = start + 1;
  for (;;) {
    const end = binary.indexOf(0, at);
    if (end < 0 || end === at) break;
    names.push(binary.toString('latin1', at, end));
    at = end + 1;
    if (names.length > 2000) return null;
  }
  // A real table is sorted and made of applet-like names; anything else is a false match.
  const valid = names.length >= 10 && names.every((n, i) => /^[A-Za-z0-9._[\]-]+$/.test(n) && (i === 0 || names[i - 1]! < n));
  return valid ? names : null;
}
