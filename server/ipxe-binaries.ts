import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Where Debian's `ipxe` package puts its binaries on this host (Debian 12: a 2019 iPXE, x86 only). */
export const HOST_IPXE_DIR = '/usr/lib/ipxe';
/** @deprecated the host's directory; use selectIpxeDir() to find the one to serve. */
export const IPXE_DIR = HOST_IPXE_DIR;

/**
 * Where scripts/setup-host.sh unpacks Debian 13's `ipxe` package (pinned version, checksum
 * checked). /usr/local/share: files an admin's setup step installed, read-only at run time and
 * not part of any dpkg package, so neither apt nor netboot's state (/var/lib/netboot) owns them.
 */
export const BUNDLED_IPXE_DIR = '/usr/local/share/netboot/ipxe';

/**
 * The iPXE binaries handed to firmware (DHCP bootfile, TFTP and /ipxe/): BIOS PXE, x86-64 UEFI
 * (snponly.efi, ipxe.efi = ipxe-amd64.efi) and arm64 UEFI (ipxe-arm64.efi, Debian 13 on).
 */
export const IPXE_BINARIES = ['undionly.kpxe', 'undionly.kkpxe', 'ipxe.pxe', 'ipxe.efi', 'snponly.efi', 'ipxe-amd64.efi', 'ipxe-arm64.efi'] as const;

/** The binary for arm64 UEFI clients (DHCP arch 11 and 19). */
export const ARM64_EFI_BINARY = 'ipxe-arm64.efi';

/**
 * The path of an iPXE binary by its name, or null for any other name. The names are a fixed
 * list, so following the package's own links (Debian's ipxe.efi -> ipxe-amd64.efi or /boot/ipxe.efi) is safe.
 */
export function ipxeBinaryPath(name: string, dir = HOST_IPXE_DIR): string | null {
  return (IPXE_BINARIES as readonly string[]).includes(name) ? join(dir, name) : null;
}

export interface IpxeSelection {
  dir: string;
  source: 'config' | 'bundled' | 'host';
  /** The Debian package version, from the VERSION file setup-host.sh writes (bundled only). */
  version?: string;
  /** Set when the server should say something is missing or old. */
  warning?: string;
}

export interface IpxeDirs {
  bundled: string;
  host: string;
}

/**
 * Which directory to serve iPXE from: `server.ipxeDir` when configured, else the one setup
 * fetched, else the host's package directory (with a warning: no arm64 binary, an iPXE that
 * waits longer for IPv6, see issue 17).
 */
export function selectIpxeDir(configured: string | undefined, dirs: IpxeDirs = { bundled: BUNDLED_IPXE_DIR, host: HOST_IPXE_DIR }): IpxeSelection {
  if (configured !== undefined) {
    const missing = IPXE_BINARIES.filter((name) => name !== 'ipxe-amd64.efi' && !existsSync(join(configured, name)));
    return {
      dir: configured,
      source: 'config',
      ...(missing.length ? { warning: `server.ipxeDir ${configured} has no ${missing.join(', ')}: clients that need them get "file not found"` } : {}),
    };
  }
  if (existsSync(join(dirs.bundled, 'undionly.kpxe'))) {
    const version = readVersion(dirs.bundled);
    return { dir: dirs.bundled, source: 'bundled', ...(version ? { version } : {}) };
  }
  const hostMissing = !existsSync(join(dirs.host, 'undionly.kpxe'));
  return {
    dir: dirs.host,
    source: 'host',
    warning: hostMissing
      ? `no iPXE binaries: neither ${dirs.bundled} nor ${dirs.host} has them; run scripts/setup-host.sh as root`
      : `serving the host's iPXE from ${dirs.host} (older, no arm64 binary); run scripts/setup-host.sh as root to fetch the current one into ${dirs.bundled}`,
  };
}

function readVersion(dir: string): string | undefined {
  try {
    return readFileSync(join(dir, 'VERSION'), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}
