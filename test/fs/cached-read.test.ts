import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cachedReadAvailable, readCached } from '../../server/fs/cached-read.ts';

const PAGE = 4096;

describe('readCached (netboot_pread addon)', () => {
  // On disk, not tmpfs: the test evicts pages with an O_DIRECT write, which tmpfs refuses.
  const dir = mkdtempSync(join('/var/tmp', 'netboot-cached-read-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is built here (npm ci builds it; without it NBD reads all go through the thread pool)', () => {
    expect(cachedReadAvailable).toBe(true);
  });

  it('copies a cached range whole, stops where the page cache ends, and at the end of the file', () => {
    const path = join(dir, 'file');
    const size = 16 << 20;
    const data = randomBytes(size);
    writeFileSync(path, data, { flush: true });
    // Rewriting the file with O_DIRECT (same bytes) drops all of it from the page cache.
    execFileSync('dd', [`if=${path}`, `of=${path}`, 'bs=1M', 'conv=notrunc', 'oflag=direct', 'status=none']);
    const fd = openSync(path, 'r');
    try {
      const out = Buffer.alloc(size + 20, 0xee);
      expect(readCached(fd, out, 0, PAGE, size - PAGE)).toBe(0); // on the disk only

      // Writing the first 64 KiB again (same bytes, whole pages) caches exactly them: a read would
      // also cache whatever the device's readahead adds, which on some disks is the whole file.
      const writer = openSync(path, 'r+');
      writeSync(writer, data, 0, 64 << 10, 0);
      closeSync(writer);
      out.fill(0xee);
      expect(readCached(fd, out, 10, 64 << 10, 0)).toBe(64 << 10);
      expect(out.subarray(10, 10 + (64 << 10)).equals(data.subarray(0, 64 << 10))).toBe(true);
      expect(out[9]).toBe(0xee);
      expect(out[10 + (64 << 10)]).toBe(0xee);

      // Asked for the whole file: what is cached comes, up to the first page that is not.
      out.fill(0xee);
      const got = readCached(fd, out, 0, size, 0);
      expect(got).toBeGreaterThanOrEqual(64 << 10);
      expect(got).toBeLessThan(size);
      expect(out.subarray(0, got).equals(data.subarray(0, got))).toBe(true);
      expect(out[got]).toBe(0xee);
    } finally {
      closeSync(fd);
    }
  });

  it('stops at the end of the file', () => {
    const path = join(dir, 'short');
    const data = randomBytes(PAGE + 100);
    writeFileSync(path, data);
    const fd = openSync(path, 'r');
    try {
      const out = Buffer.alloc(4 * PAGE);
      expect(readCached(fd, out, 0, 4 * PAGE, PAGE)).toBe(100);
      expect(out.subarray(0, 100).equals(data.subarray(PAGE))).toBe(true);
      expect(readCached(fd, out, 0, 10, data.length)).toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  it('refuses a range beyond the buffer and a bad fd instead of writing out of bounds', () => {
    const path = join(dir, 'small');
    writeFileSync(path, Buffer.alloc(100, 1));
    const fd = openSync(path, 'r');
    try {
      expect(() => readCached(fd, Buffer.alloc(10), 5, 10, 0)).toThrow(/beyond the buffer/);
      expect(() => readCached(fd, Buffer.alloc(10), -1, 1, 0)).toThrow(/non-negative/);
    } finally {
      closeSync(fd);
    }
    expect(() => readCached(fd, Buffer.alloc(10), 0, 10, 0)).toThrow(/EBADF|Bad file descriptor/);
  });
});
