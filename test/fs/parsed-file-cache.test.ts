import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../../server/fs/atomic-write.ts';
import { ParsedFileCache } from '../../server/fs/parsed-file-cache.ts';

describe('ParsedFileCache', () => {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-pfc-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('parses a file once while it is unchanged, again when it is replaced or rewritten; missing or unparsable is null', async () => {
    let parses = 0;
    const cache = new ParsedFileCache((text) => {
      parses++;
      return JSON.parse(text) as { id: string };
    });
    const path = join(dir, 'img.current');
    expect(cache.get(path)).toBeNull();
    writeFileSync(path, '{"id":"a"}');
    expect(cache.get(path)).toEqual({ id: 'a' });
    expect(cache.get(path)).toEqual({ id: 'a' });
    expect(parses).toBe(1);
    // What another process does: a new inode renamed in, same size.
    await writeFileAtomic(path, '{"id":"b"}');
    expect(cache.get(path)).toEqual({ id: 'b' });
    // Rewritten in place with a different size.
    writeFileSync(path, '{"id":"cc"}');
    expect(cache.get(path)).toEqual({ id: 'cc' });
    expect(parses).toBe(3);
    writeFileSync(path, '{"id":');
    expect(cache.get(path)).toBeNull();
    rmSync(path);
    expect(cache.get(path)).toBeNull();
    expect(cache.get(dir)).toBeNull(); // a directory is no file
  });

  it('holds at most maxEntries files', () => {
    let parses = 0;
    const cache = new ParsedFileCache((text) => (parses++, text), 2);
    for (const name of ['a', 'b', 'c']) writeFileSync(join(dir, name), name);
    for (const name of ['a', 'b', 'c', 'c']) expect(cache.get(join(dir, name))).toBe(name);
    expect(parses).toBe(3);
    expect(cache.get(join(dir, 'a'))).toBe('a'); // dropped when c came in: parsed again
    expect(parses).toBe(4);
  });
});
