import { access, constants } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

/** A program (or file) from a Debian package that netboot runs or serves. */
export interface HostTool {
  /** Executable looked up on PATH, or an absolute file path. */
  name: string;
  debianPackage: string;
  purpose: string;
  /** runtime: `netboot serve/build` needs it; test: the test suite, `vm` and `demo` need it. */
  need: 'runtime' | 'test';
  /** Nothing fails without it (a command falls back to a weaker way): `netboot check` lists it but does not fail. */
  optional?: true;
}

export const HOST_TOOLS: readonly HostTool[] = [
  { name: 'tar2sqfs', debianPackage: 'squashfs-tools-ng', purpose: 'build rootfs.squashfs from the image', need: 'runtime' },
  { name: 'rdsquashfs', debianPackage: 'squashfs-tools-ng', purpose: 'read files back from a squashfs', need: 'runtime' },
  { name: '/bin/busybox', debianPackage: 'busybox-static', purpose: 'the initramfs userland', need: 'runtime' },
  { name: '/usr/lib/ipxe/undionly.kpxe', debianPackage: 'ipxe', purpose: 'iPXE for BIOS PXE clients', need: 'runtime' },
  { name: '/usr/lib/ipxe/snponly.efi', debianPackage: 'ipxe', purpose: 'iPXE for UEFI PXE clients', need: 'runtime' },
  { name: 'zstd', debianPackage: 'zstd', purpose: 'zstd layers and initramfs', need: 'runtime' },
  { name: 'ssh-keygen', debianPackage: 'openssh-client', purpose: 'per-machine SSH host keys', need: 'runtime' },
  { name: 'cc', debianPackage: 'gcc', purpose: 'compile the initramfs NBD client (root: nbd)', need: 'runtime' },
  { name: '/usr/include/stdio.h', debianPackage: 'libc6-dev', purpose: 'compile the initramfs NBD client (root: nbd)', need: 'runtime' },
  { name: 'ip', debianPackage: 'iproute2', purpose: 'private lab networks', need: 'runtime' },
  { name: 'rdisc6', debianPackage: 'ndisc6', purpose: 'doctor: ask routers for IPv6 advertisements (one RS)', need: 'runtime', optional: true },
  { name: 'qemu-system-x86_64', debianPackage: 'qemu-system-x86', purpose: 'boot test VMs (netboot vm, demo)', need: 'test' },
  { name: '/usr/lib/ipxe/qemu/efi-virtio.rom', debianPackage: 'ipxe-qemu', purpose: "QEMU NICs' iPXE ROMs", need: 'test' },
  { name: '/usr/share/OVMF/OVMF_CODE_4M.fd', debianPackage: 'ovmf', purpose: 'UEFI firmware for VMs', need: 'test' },
  { name: 'dockerd', debianPackage: 'docker.io', purpose: 'build fixture images', need: 'test' },
  { name: 'debootstrap', debianPackage: 'debootstrap', purpose: 'base of fixture images', need: 'test' },
  { name: 'nbd-client', debianPackage: 'nbd-client', purpose: 'NBD interop tests', need: 'test' },
  { name: 'dnsmasq', debianPackage: 'dnsmasq-base', purpose: "a 'lab DHCP server' in tests", need: 'test' },
  { name: 'atftp', debianPackage: 'atftp', purpose: 'TFTP interop tests', need: 'test' },
  { name: 'tftp', debianPackage: 'tftp-hpa', purpose: 'TFTP interop tests', need: 'test' },
  { name: 'curl', debianPackage: 'curl', purpose: 'HTTP/TFTP interop tests', need: 'test' },
];

export interface ToolStatus extends HostTool {
  found: string | null;
}

export async function findTool(name: string): Promise<string | null> {
  const candidates = name.startsWith('/')
    ? [name]
    : (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin']).map((dir) => join(dir, name));
  for (const candidate of candidates) {
    try {
      await access(candidate, name.startsWith('/') ? constants.R_OK : constants.X_OK);
      return candidate;
    } catch {
      /* next */
    }
  }
  return null;
}

export async function checkHostTools(tools: readonly HostTool[] = HOST_TOOLS): Promise<ToolStatus[]> {
  return Promise.all(tools.map(async (tool) => ({ ...tool, found: await findTool(tool.name) })));
}

/** The exact command that installs what is missing (deduplicated packages), or null. */
export function installCommand(missing: readonly HostTool[], asRoot = process.getuid?.() === 0): string | null {
  const packages = [...new Set(missing.map((tool) => tool.debianPackage))].sort();
  if (packages.length === 0) return null;
  const sudo = asRoot ? '' : 'sudo ';
  return `${sudo}apt-get update && ${sudo}apt-get install -y --no-install-recommends ${packages.join(' ')}`;
}
