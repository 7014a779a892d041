import { readFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { kernelArchitecture, platformArchitecture } from '../../server/images/kernel-arch.ts';
import { debianKernelFixture } from '../initramfs/fixture.ts';

/** An arm64 Image header as the kernel lays it out (Documentation/arch/arm64/booting.rst): magic at 56. */
function arm64Image(withPe: boolean): Buffer {
  const b = Buffer.alloc(4096);
  b.write('ARM\x64', 56, 'latin1');
  if (withPe) {
    b.write('MZ', 0, 'latin1');
    b.writeUInt32LE(0x40, 0x3c);
    b.write('PE\0\0', 0x40, 'latin1');
    b.writeUInt16LE(0xaa64, 0x44);
  }
  return b;
}

describe('kernelArchitecture', () => {
  it('reads arm64 from a bare Image, an EFI-stub Image and a gzip-compressed one (Debian bookworm arm64 vmlinuz)', () => {
    expect(kernelArchitecture(arm64Image(false))).toBe('arm64');
    expect(kernelArchitecture(arm64Image(true))).toBe('arm64');
    expect(kernelArchitecture(gzipSync(Buffer.concat([arm64Image(false), Buffer.alloc(1 << 20, 7)])))).toBe('arm64');
  });

  it('reads amd64 from a real Debian bzImage', async () => {
    const fixture = await debianKernelFixture();
    expect(kernelArchitecture(await readFile(fixture.vmlinuz))).toBe('amd64');
  }, 600_000);

  it('says null for what it does not recognise, corrupt gzip included, and never throws', () => {
    expect(kernelArchitecture(Buffer.from('KERNEL-6.1'))).toBeNull();
    expect(kernelArchitecture(Buffer.alloc(0))).toBeNull();
    const gz = gzipSync(Buffer.alloc(100_000));
    gz.fill(0xff, 10, 40);
    expect(kernelArchitecture(gz)).toBeNull();
    const badPe = Buffer.alloc(256);
    badPe.write('MZ', 0, 'latin1');
    badPe.writeUInt32LE(0xffffff00, 0x3c);
    expect(kernelArchitecture(badPe)).toBeNull();
  });

  it('takes the architecture out of an OCI platform', () => {
    expect(platformArchitecture('linux/arm64/v8')).toBe('arm64');
    expect(platformArchitecture('linux/amd64')).toBe('amd64');
  });
});
