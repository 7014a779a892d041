import { constants, gunzipSync } from 'node:zlib';

/**
 * The CPU architecture a kernel image is built for (Debian names: amd64, arm64), read from its
 * headers, so an image whose kernel cannot run on the configured platform fails its build
 * instead of a machine's boot. Null when the format is not recognised (no check then).
 *
 * - PE/COFF (x86 bzImage and arm64 Image with the EFI stub, arm64 EFI zboot): the COFF machine.
 * - x86 boot protocol without a PE header: "HdrS" at 0x202.
 * - arm64 Image without the EFI stub: "ARM\x64" at 56.
 * - gzip (Debian's arm64 vmlinuz up to bookworm): the same, on the decompressed head.
 */
export function kernelArchitecture(kernel: Buffer, depth = 0): string | null {
  if (kernel.length >= 0x40 && kernel.toString('latin1', 0, 2) === 'MZ') {
    const pe = kernel.readUInt32LE(0x3c);
    if (pe + 6 <= kernel.length && kernel.toString('latin1', pe, pe + 4) === 'PE\0\0') {
      const machine = PE_MACHINES[kernel.readUInt16LE(pe + 4)];
      if (machine) return machine;
    }
  }
  if (kernel.length >= 0x206 && kernel.toString('latin1', 0x202, 0x206) === 'HdrS') return 'amd64';
  if (kernel.length >= 60 && kernel.toString('latin1', 56, 60) === 'ARM\x64') return 'arm64';
  if (depth === 0 && kernel.length > 18 && kernel[0] === 0x1f && kernel[1] === 0x8b) {
    try {
      // The head is enough: a sync flush returns what the first 64 KiB decompress to, without needing the end.
      const head = gunzipSync(kernel.subarray(0, 64 << 10), { finishFlush: constants.Z_SYNC_FLUSH });
      return kernelArchitecture(head, 1);
    } catch {
      return null;
    }
  }
  return null;
}

const PE_MACHINES: Record<number, string> = { 0x8664: 'amd64', 0xaa64: 'arm64', 0x14c: 'i386', 0x5064: 'riscv64' };

/** The architecture part of an OCI platform (`linux/arm64/v8` -> arm64). */
export function platformArchitecture(platform: string): string {
  return platform.split('/')[1] ?? platform;
}
