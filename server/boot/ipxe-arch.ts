import { platformArchitecture } from '../images/kernel-arch.ts';

/**
 * The iPXE `${buildarch}` values whose machines can run a kernel of each image architecture.
 * i386: the BIOS iPXE (undionly.kpxe) is a 32-bit build that boots x86-64 kernels.
 */
const IPXE_BUILDARCH: Record<string, readonly string[]> = { amd64: ['x86_64', 'i386'], arm64: ['arm64'] };

/**
 * The iPXE line that sends a machine whose iPXE was built for another architecture than the
 * image's kernel to `:wrong_arch` (machine.ipxe), which prints why instead of loading a kernel
 * the firmware cannot run (an arm64 machine given an amd64 image shows no message otherwise).
 * `a || b || goto x` runs `goto x` only when every check failed.
 */
export function ipxeArchCheck(platform: string): string {
  const arches = IPXE_BUILDARCH[platformArchitecture(platform)];
  if (!arches) return `# no architecture check: iPXE has no build for ${platform}`;
  return [...arches.map((arch) => `iseq \${buildarch} ${arch} ||`), 'goto wrong_arch'].join(' ');
}
