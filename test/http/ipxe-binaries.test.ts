import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { selectIpxeDir } from '../../server/ipxe-binaries.ts';
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

describe('which iPXE directory is served', () => {
  const root = mkdtempSync(join(tmpdir(), 'netboot-ipxe-select-'));
  const bundled = join(root, 'bundled');
  const host = join(root, 'host');
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const put = (dir: string, names: string[]) => {
    mkdirSync(dir, { recursive: true });
    for (const name of names) writeFileSync(join(dir, name), name);
  };

  it("the host's /usr/lib/ipxe, with a warning that says how to get the current one; a clear warning when there is none", () => {
    expect(selectIpxeDir(undefined, { bundled, host })).toMatchObject({ dir: host, source: 'host', warning: expect.stringMatching(/no iPXE binaries.*setup-host\.sh/) });
    put(host, ['undionly.kpxe', 'snponly.efi', 'ipxe.efi']);
    expect(selectIpxeDir(undefined, { bundled, host })).toMatchObject({ dir: host, source: 'host', warning: expect.stringMatching(/older, no arm64.*setup-host\.sh/) });
  });

  it('the one setup fetched, with its version, once it is there', () => {
    put(bundled, ['undionly.kpxe', 'snponly.efi', 'ipxe.efi', 'ipxe-arm64.efi']);
    writeFileSync(join(bundled, 'VERSION'), '1.21.1+git20250501.dad20602+dfsg-1\n');
    expect(selectIpxeDir(undefined, { bundled, host })).toEqual({ dir: bundled, source: 'bundled', version: '1.21.1+git20250501.dad20602+dfsg-1' });
  });

  it('server.ipxeDir wins, and a warning names the binaries it lacks', () => {
    const own = join(root, 'own');
    put(own, ['undionly.kpxe', 'snponly.efi']);
    const selection = selectIpxeDir(own, { bundled, host });
    expect(selection).toMatchObject({ dir: own, source: 'config' });
    expect(selection.warning).toMatch(/ipxe\.efi.*ipxe-arm64\.efi/);
  });

  it('serves ipxe-arm64.efi over /ipxe/ (arm64 UEFI HTTP Boot)', async () => {
    const h = await harness(undefined, {}, { ipxeDir: bundled });
    try {
      const res = await h.app.inject({ method: 'GET', url: '/ipxe/ipxe-arm64.efi' });
      expect(res.statusCode).toBe(200);
      expect(res.body).toBe('ipxe-arm64.efi');
    } finally {
      await h.close();
    }
  });
});
