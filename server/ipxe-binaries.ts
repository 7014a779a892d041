import { join } from 'node:path';

/** Where Debian's `ipxe` package puts its binaries. */
export const IPXE_DIR = '/usr/lib/ipxe';

/** The iPXE binaries handed to firmware (DHCP bootfile): BIOS PXE and x86-64 UEFI. */
export const IPXE_BINARIES = ['undionly.kpxe', 'undionly.kkpxe', 'ipxe.pxe', 'ipxe.efi', 'snponly.efi'] as const;

/**
 * The path of an iPXE binary by its name, or null for any other name. The names are a fixed
 * list, so following the package's own links (Debian's ipxe.efi -> /boot/ipxe.efi) is safe.
 */
export function ipxeBinaryPath(name: string, dir = IPXE_DIR): string | null {
  return (IPXE_BINARIES as readonly string[]).includes(name) ? join(dir, name) : null;
}
