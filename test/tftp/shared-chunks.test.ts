import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openRegularFile, type TftpFile } from '../../server/tftp/files.ts';
import { ChunkReader, SharedChunks, SHARED_FILE_MAX_BYTES } from '../../server/tftp/server.ts';

/** A file in memory that counts its reads. */
function countingFile(content: Buffer, version?: string): TftpFile & { reads: number } {
  const file = {
    size: content.length,
    reads: 0,
    ...(version === undefined ? {} : { version }),
    async read(offset: number, length: number) {
      file.reads++;
      return content.subarray(offset, Math.min(content.length, offset + length));
    },
    async close() {},
  };
  return file;
}

const content = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 251));
const block = (n: number, blksize = 1024) => ({ index: n, wire: n & 0xffff, offset: (n - 1) * blksize, length: Math.min(blksize, content.length - (n - 1) * blksize) });

describe('TFTP chunks shared by transfers of one file version', () => {
  const dir = mkdtempSync(join(tmpdir(), 'st-chunks-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('two transfers of the same version read each chunk once and get the same bytes; the store goes with the last one', async () => {
    const shared = new SharedChunks();
    const a = countingFile(content, 'v1');
    const b = countingFile(content, 'v1');
    const ra = new ChunkReader(a, 1024, shared);
    const rb = new ChunkReader(b, 1024, shared);
    expect(shared.size).toBe(1);
    const wrong: number[] = [];
    for (let n = 1; n <= Math.ceil(content.length / 1024); n++) {
      const want = content.subarray((n - 1) * 1024, n * 1024);
      if (!(await ra.block(block(n))).equals(want) || !(await rb.block(block(n))).equals(want)) wrong.push(n);
    }
    expect(wrong).toEqual([]);
    // 300,000 bytes in chunks of 256 KiB: two reads in all, whichever transfer made them.
    expect(a.reads + b.reads).toBe(2);
    ra.dispose();
    ra.dispose();
    expect(shared.size).toBe(1);
    rb.dispose();
    expect(shared.size).toBe(0);
  });

  it('files without a version, or bigger than the limit, are read per transfer as before', async () => {
    const shared = new SharedChunks();
    const a = countingFile(content);
    const b = countingFile(content);
    const ra = new ChunkReader(a, 1024, shared);
    const rb = new ChunkReader(b, 1024, shared);
    await ra.block(block(1));
    await rb.block(block(1));
    expect(a.reads).toBeGreaterThanOrEqual(1);
    expect(b.reads).toBeGreaterThanOrEqual(1);
    expect(shared.size).toBe(0);
    const big = { ...countingFile(content, 'big'), size: SHARED_FILE_MAX_BYTES + 1 };
    new ChunkReader(big, 1024, shared);
    expect(shared.size).toBe(0);
  });

  it('a regular file names its version, and its last chunk holds only the bytes left', async () => {
    const path = join(dir, 'snp.efi');
    writeFileSync(path, content);
    const file = (await openRegularFile(path))!;
    const again = (await openRegularFile(path))!;
    expect(file.version).toMatch(/^\d+:\d+:300000:/);
    expect(again.version).toBe(file.version);
    const tail = await file.read(262_144, 262_144);
    expect(tail.length).toBe(300_000 - 262_144);
    expect(tail.buffer.byteLength).toBeLessThan(262_144);
    await file.close();
    await again.close();
    writeFileSync(path, Buffer.concat([content, content]));
    const changed = (await openRegularFile(path))!;
    expect(changed.version).not.toBe(file.version);
    await changed.close();
  });
});
