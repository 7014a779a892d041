import { mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  appendDurable,
  appendDurableSync,
  createFileDurable,
  fsyncTree,
  renameDurable,
  writeFileAtomic,
  writeFileAtomicSync,
} from '../../server/fs/atomic-write.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'atomic-write-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('writeFileAtomic', () => {
  it('replaces the content and leaves no temp file', async () => {
    const path = join(dir, 'f.json');
    await writeFile(path, 'old');
    await writeFileAtomic(path, 'new', 0o600);
    expect(await readFile(path, 'utf8')).toBe('new');
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await readdir(dir)).toEqual(['f.json']);
  });

  it('keeps the old file and removes the temp when the rename fails', async () => {
    const path = join(dir, 'target');
    await mkdir(path);
    await writeFile(join(path, 'inside'), 'x');
    // Renaming a file over a non-empty directory fails: the target must be untouched.
    await expect(writeFileAtomic(path, 'data')).rejects.toThrow();
    expect(await readdir(dir)).toEqual(['target']);
    expect(await readFile(join(path, 'inside'), 'utf8')).toBe('x');
  });

  it('fails cleanly when the directory is missing', async () => {
    await expect(writeFileAtomic(join(dir, 'nope', 'f'), 'x')).rejects.toThrow(/ENOENT/);
  });

  it('sync variant', () => {
    const path = join(dir, 's');
    writeFileAtomicSync(path, Buffer.from('abc'));
    writeFileAtomicSync(path, 'abcd');
    return readFile(path, 'utf8').then((t) => expect(t).toBe('abcd'));
  });
});

describe('appendDurable', () => {
  it('appends whole lines, creating the file', async () => {
    const path = join(dir, 'ledger');
    await appendDurable(path, '{"a":1}');
    await appendDurable(path, '{"a":2}\n');
    appendDurableSync(path, '{"a":3}');
    expect(await readFile(path, 'utf8')).toBe('{"a":1}\n{"a":2}\n{"a":3}\n');
  });

  it('rejects when the directory is gone (the caller decides what to do)', async () => {
    await expect(appendDurable(join(dir, 'gone', 'ledger'), 'x')).rejects.toThrow(/ENOENT/);
    expect(() => appendDurableSync(join(dir, 'gone', 'ledger'), 'x')).toThrow(/ENOENT/);
  });
});

describe('fsyncTree + renameDurable', () => {
  it('publishes a finished tree under its final name', async () => {
    const tmp = join(dir, '.tmp-build');
    await mkdir(join(tmp, 'sub'), { recursive: true });
    await writeFile(join(tmp, 'a'), 'A');
    await writeFile(join(tmp, 'sub', 'b'), 'B');
    await fsyncTree(tmp);
    await renameDurable(tmp, join(dir, 'final'));
    expect(await readFile(join(dir, 'final', 'sub', 'b'), 'utf8')).toBe('B');
    expect(await readdir(dir)).toEqual(['final']);
  });
});

describe('createFileDurable', () => {
  it('creates the file once, leaves no temp; an existing file is kept as it is', async () => {
    const path = join(dir, 'netboot.key');
    expect(await createFileDurable(path, 'first', 0o600)).toBe(true);
    expect(await readFile(path, 'utf8')).toBe('first');
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await createFileDurable(path, 'second')).toBe(false);
    expect(await readFile(path, 'utf8')).toBe('first');
    expect(await readdir(dir)).toEqual(['netboot.key']);
  });

  it('concurrent creators: exactly one wins, every one reads the winner\'s content', async () => {
    const path = join(dir, 'race');
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => createFileDurable(path, `writer ${i}`)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await readFile(path, 'utf8')).toBe(`writer ${results.indexOf(true)}`);
    expect(await readdir(dir)).toEqual(['race']);
  });

  it('fails cleanly when the directory is missing', async () => {
    await expect(createFileDurable(join(dir, 'nope', 'f'), 'x')).rejects.toThrow(/ENOENT/);
  });
});
