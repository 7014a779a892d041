import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { harness } from './setup.ts';

describe('GET /ipxe/<binary> (UEFI HTTP Boot)', () => {
  // Debian's ipxe.efi is a link to /boot/ipxe.efi: the fixed list of names may follow it.
  const outside = mkdtempSync(join(tmpdir(), 'netboot-ipxe-target-'));
  const dir = mkdtempSync(join(tmpdir(), 'netboot-ipxe-'));
  writeFileSync(join(outside, 'ipxe.efi'), Buffer.alloc(5000, 0x4d));
  symlinkSync(join(outside, 'ipxe.efi'), join(dir, 'ipxe.efi'));
  writeFileSync(join(dir, 'ipxe.iso'), 'not handed out');
  afterAll(() => {
    rmSync(outside, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the iPXE binaries, following the package link, and nothing else', async () => {
    const h = await harness(undefined, {}, { ipxeDir: dir });
    try {
      const head = await h.app.inject({ method: 'HEAD', url: '/ipxe/ipxe.efi' });
      expect(head.statusCode).toBe(200);
      expect(head.headers['content-length']).toBe('5000');
      const get = await h.app.inject({ method: 'GET', url: '/ipxe/ipxe.efi' });
      expect(get.rawPayload.equals(readFileSync(join(outside, 'ipxe.efi')))).toBe(true);
      for (const url of ['/ipxe/ipxe.iso', '/ipxe/..%2F..%2Fetc%2Fpasswd', '/ipxe/snponly.efi']) {
        expect((await h.app.inject({ method: 'GET', url })).statusCode).toBe(404);
      }
    } finally {
      await h.close();
    }
  });

  it("serves Debian's real binaries by default", async () => {
    const h = await harness();
    try {
      const res = await h.app.inject({ method: 'GET', url: '/ipxe/ipxe.efi' });
      expect(res.statusCode).toBe(200);
      expect(res.rawPayload.subarray(0, 2).toString('latin1')).toBe('MZ');
    } finally {
      await h.close();
    }
  });
});
