import { mkdtempSync, readdirSync, readlinkSync, rmSync, unlinkSync, writeFileSync, renameSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { OpenFileCache, type OpenFile } from '../../server/fs/open-file-cache.ts';

/** The files this process has open under `dir` (from /proc/self/fd). */
function openUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith(dir)) out.push(target);
    } catch {
      /* closed meanwhile */
    }
  }
  return out.sort();
}

async function text(file: OpenFile): Promise<string> {
  const buffer = Buffer.alloc(file.stat.size);
  const n = await file.read(buffer, 0, buffer.length, 0);
  return buffer.subarray(0, n).toString();
}

describe('OpenFileCache', () => {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-ofc-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('shares one fd per file version; a replaced file goes to new requests, the old one stays with its holders', async () => {
    const cache = new OpenFileCache();
    const path = join(dir, 'kernel');
    writeFileSync(path, 'version one');
    const a = cache.acquire(path)!;
    const b = cache.acquire(path)!;
    expect(b.fd).toBe(a.fd);
    expect(a.version).toBe(b.version);
    expect(openUnder(dir)).toEqual([path]);

    writeFileSync(`${path}.new`, 'version two!');
    renameSync(`${path}.new`, path);
    const c = cache.acquire(path)!;
    expect(c.fd).not.toBe(a.fd);
    expect(c.version).not.toBe(a.version);
    expect(await text(c)).toBe('version two!');
    expect(await text(a)).toBe('version one'); // still readable by whoever holds it
    a.release();
    a.release(); // idempotent: does not take b's reference
    expect(await text(b)).toBe('version one');
    b.release();
    // The old version closes with its last holder; the current one stays open, idle, for the next request.
    expect(openUnder(dir)).toEqual([path]);
    c.release();
    expect(cache.acquire(path)!.fd).toBe(c.fd);
    expect(cache.openCount).toBe(1);
  });

  it('a file rewritten in place (same inode, new size or mtime) is a new version', async () => {
    const cache = new OpenFileCache();
    const path = join(dir, 'in-place');
    writeFileSync(path, 'aaaa');
    const a = cache.acquire(path)!;
    a.release();
    writeFileSync(path, 'bbbbbb');
    const b = cache.acquire(path)!;
    expect(b.stat.size).toBe(6);
    expect(await text(b)).toBe('bbbbbb');
    b.release();
    utimesSync(path, new Date(1000), new Date(2000));
    const c = cache.acquire(path)!;
    expect(c.version).not.toBe(b.version);
    c.release();
    expect(cache.openCount).toBe(1);
  });

  it('a deleted file, a directory or a missing path is null, and a deleted file is closed once idle', () => {
    const cache = new OpenFileCache();
    const path = join(dir, 'gone');
    writeFileSync(path, 'x');
    const held = cache.acquire(path)!;
    unlinkSync(path);
    expect(cache.acquire(path)).toBeNull();
    expect(cache.openCount).toBe(1); // the holder still reads it
    held.release();
    expect(cache.openCount).toBe(0);
    expect(cache.acquire(dir)).toBeNull();
    expect(cache.acquire(join(dir, 'never'))).toBeNull();
    expect(openUnder(join(dir, 'gone'))).toEqual([]);
  });

  it('a read in flight keeps its file open after its holder releases it; a read after release is refused', async () => {
    const cache = new OpenFileCache(0); // nothing kept idle: the last release closes
    const path = join(dir, 'in-flight');
    writeFileSync(path, 'in flight');
    const file = cache.acquire(path)!;
    const buffer = Buffer.alloc(9);
    const reading = file.read(buffer, 0, 9, 0);
    file.release();
    expect(cache.openCount).toBe(1); // held by the read
    expect(await reading).toBe(9);
    expect(buffer.toString()).toBe('in flight');
    expect(cache.openCount).toBe(0);
    await expect(file.read(buffer, 0, 9, 0)).rejects.toThrow(/read after release/);
  });

  it('keeps at most maxIdle unused fds open (the least recently used go first); closeIdle closes them all', () => {
    const cache = new OpenFileCache(2);
    const paths = ['i1', 'i2', 'i3'].map((name) => {
      const path = join(dir, name);
      writeFileSync(path, name);
      return path;
    });
    const files = paths.map((path) => cache.acquire(path)!);
    expect(cache.openCount).toBe(3);
    for (const file of files) file.release();
    expect(cache.openCount).toBe(2);
    expect(openUnder(dir).filter((p) => paths.includes(p))).toEqual(paths.slice(1));
    cache.closeIdle();
    expect(cache.openCount).toBe(0);
  });

  it('closes idle fds after idleMs', async () => {
    const cache = new OpenFileCache(64, 50);
    const path = join(dir, 'idle');
    writeFileSync(path, 'idle');
    cache.acquire(path)!.release();
    expect(cache.openCount).toBe(1);
    await expect.poll(() => cache.openCount, { timeout: 10_000, interval: 50 }).toBe(0);
  });
});
