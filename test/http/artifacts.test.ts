import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../lab/wait-until.ts';
import { addImage, sha256, type FakeImage } from './fixtures.ts';
import { harness, MAC, MAC_HYP, type Harness } from './setup.ts';

let h: Harness;
let image: FakeImage;
let base: string;

beforeAll(async () => {
  h = await harness();
  image = addImage(h.store, 'demo', { rootfsPadding: 6 << 20 });
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(h.app.server.address() as AddressInfo).port}`;
});
afterAll(async () => h?.close());

const run = promisify(execFile);
/** Async: the server under test runs in this process, so a blocking child would starve it. */
async function curl(args: string[]): Promise<string> {
  return (await run('curl', ['-sS', '--max-time', '30', ...args], { encoding: 'latin1' })).stdout;
}

describe('artifacts over inject', () => {
  it('GET streams the whole file with a strong ETag from the manifest and immutable caching', async () => {
    const res = await h.app.inject(`/images/${image.id}/vmlinuz`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(image.files.vmlinuz!)).toBe(true);
    expect(res.headers.etag).toBe(`"${sha256(image.files.vmlinuz!)}"`);
    expect(res.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(res.headers['accept-ranges']).toBe('bytes');
    expect(Number(res.headers['content-length'])).toBe(image.files.vmlinuz!.length);
  });

  it('manifest.json (no digest of itself) gets an ETag from id, name, size and mtime', async () => {
    const a = await h.app.inject(`/images/${image.id}/manifest.json`);
    expect(a.statusCode).toBe(200);
    expect(a.headers['content-type']).toMatch(/^application\/json/);
    expect(a.headers.etag).toMatch(/^"[0-9a-f]{32}"$/);
    expect((await h.app.inject(`/images/${image.id}/manifest.json`)).headers.etag).toBe(a.headers.etag);
  });

  it('single ranges: 206 with Content-Range, suffix ranges, 416 past the end, multi-range gets the whole file', async () => {
    const kernel = image.files.vmlinuz!;
    const mid = await h.app.inject({ url: `/images/${image.id}/vmlinuz`, headers: { range: 'bytes=100-199' } });
    expect(mid.statusCode).toBe(206);
    expect(mid.headers['content-range']).toBe(`bytes 100-199/${kernel.length}`);
    expect(mid.rawPayload.equals(kernel.subarray(100, 200))).toBe(true);
    const tail = await h.app.inject({ url: `/images/${image.id}/vmlinuz`, headers: { range: 'bytes=-10' } });
    expect(tail.rawPayload.equals(kernel.subarray(kernel.length - 10))).toBe(true);
    const past = await h.app.inject({ url: `/images/${image.id}/vmlinuz`, headers: { range: `bytes=${kernel.length}-` } });
    expect(past.statusCode).toBe(416);
    expect(past.headers['content-range']).toBe(`bytes */${kernel.length}`);
    const multi = await h.app.inject({ url: `/images/${image.id}/vmlinuz`, headers: { range: 'bytes=0-1,5-6' } });
    expect(multi.statusCode).toBe(200);
    expect(multi.rawPayload.length).toBe(kernel.length);
    const staleIfRange = await h.app.inject({ url: `/images/${image.id}/vmlinuz`, headers: { range: 'bytes=0-9', 'if-range': '"other"' } });
    expect(staleIfRange.statusCode).toBe(200);
  });

  it('unknown ids, artifact names and path tricks are 404', async () => {
    for (const url of [
      `/images/nope/vmlinuz`,
      `/images/${image.id}/config`,
      `/images/${image.id}/..%2f..%2fetc%2fpasswd`,
      `/images/..%2f${image.id}/vmlinuz`,
      `/images/${image.id}/image-initrd.img`,
    ]) {
      expect((await h.app.inject(url)).statusCode, url).toBe(404);
    }
  });

  it('whole downloads with ?mac= land in the timeline with bytes; ranged ones only in the byte counter', async () => {
    await h.app.inject(`/images/${image.id}/vmlinuz?mac=${MAC_HYP}`);
    await h.app.inject(`/images/${image.id}/initrd.img?mac=${MAC_HYP}`);
    await h.app.inject({ url: `/images/${image.id}/rootfs.squashfs?mac=${MAC_HYP}`, headers: { range: 'bytes=0-4095' } });
    const phases = h.timeline.current(MAC)!.phases;
    expect(phases.map((p) => [p.phase, p.bytes])).toEqual([
      ['kernel', image.files.vmlinuz!.length],
      ['initrd', image.files['initrd.img']!.length],
    ]);
    expect(phases.every((p) => p.source === 'http' && typeof p.durationMs === 'number')).toBe(true);
    const text = await h.metrics.text();
    expect(text).toMatch(/netboot_http_bytes_total\{artifact="rootfs.squashfs"\} 4096/);
  });
});

describe('artifacts over a real socket with curl', () => {
  it('resumes a cut download and ends with identical bytes', async () => {
    const tmp = join(h.dir, 'part.squashfs');
    const url = `${base}/images/${image.id}/rootfs.squashfs`;
    const full = image.files['rootfs.squashfs']!;
    await curl(['-r', '0-1048575', '-o', tmp, url]); // the cut: the first MiB only
    expect(readFileSync(tmp).length).toBe(1 << 20);
    await curl(['-C', '-', '-o', tmp, url]);
    expect(sha256(readFileSync(tmp))).toBe(sha256(full));
    // A cut in the middle of an odd offset, resumed again.
    writeFileSync(tmp, full.subarray(0, 3_333_333));
    await curl(['-C', '-', '-o', tmp, url]);
    expect(sha256(readFileSync(tmp))).toBe(sha256(full));
  });

  it('a client that goes away mid-download is recorded as an aborted download, and the server goes on serving', async () => {
    // Bigger than any loopback socket buffering (a few MiB), so the cut is seen by the server.
    const big = randomBytes(64 << 20);
    mkdirSync(join(h.store.root, 'b16b16b16b16b16b'), { recursive: true });
    writeFileSync(h.store.artifactPath('b16b16b16b16b16b', 'rootfs.squashfs')!, big);
    const url = `${base}/images/b16b16b16b16b16b/rootfs.squashfs?mac=${MAC_HYP}`;
    await expect(curl(['--limit-rate', '50k', '--max-time', '1', '-o', '/dev/null', url])).rejects.toThrow(/timed out/i);
    await waitUntil(() => h.timeline.current(MAC)?.phases.some((p) => p.phase === 'rootfs') === true, 'the aborted download on the timeline');
    const rootfs = h.timeline.current(MAC)!.phases.find((p) => p.phase === 'rootfs')!;
    expect(rootfs.detail).toMatch(new RegExp(`^aborted after \\d+ of ${big.length} bytes$`));
    expect(rootfs.bytes).toBeLessThan(big.length);
    const full = image.files['rootfs.squashfs']!;
    expect(await curl(['-o', '/dev/null', '-w', '%{http_code} %{size_download}', `${base}/images/${image.id}/rootfs.squashfs`])).toBe(`200 ${full.length}`);
  });

  it('HEAD: length and ETag, no body', async () => {
    const out = await curl(['-I', `${base}/images/${image.id}/rootfs.squashfs`]);
    expect(out).toMatch(/^HTTP\/1.1 200/);
    expect(out).toMatch(new RegExp(`content-length: ${image.files['rootfs.squashfs']!.length}\\r\\n`, 'i'));
    expect(out).toMatch(new RegExp(`etag: "${sha256(image.files['rootfs.squashfs']!)}"`, 'i'));
  });

  it('If-None-Match with the ETag: 304; a range past the end: 416', async () => {
    const etag = `"${sha256(image.files.vmlinuz!)}"`;
    const code = await curl(['-o', '/dev/null', '-w', '%{http_code}', '-H', `If-None-Match: ${etag}`, `${base}/images/${image.id}/vmlinuz`]);
    expect(code).toBe('304');
    const past = await curl(['-o', '/dev/null', '-w', '%{http_code}', '-r', '999999999-', `${base}/images/${image.id}/vmlinuz`]);
    expect(past).toBe('416');
  });
});
