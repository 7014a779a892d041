import { mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  createFileDurable,
  fsyncTree,
  GroupCommitLog,
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

/** Resolves after the callbacks already queued for the event loop's check phase (a log's group has started). */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('GroupCommitLog', () => {
  it('concurrent appends share one write and fsync, in order, creating the file', async () => {
    const log = new GroupCommitLog(join(dir, 'ledger'), { mode: 0o600 });
    const lines = Array.from({ length: 50 }, (_, i) => `{"n":${i}}\n`);
    await Promise.all(lines.map((line) => log.append(line)));
    expect(log.fsyncs).toBe(1);
    expect(await readFile(join(dir, 'ledger'), 'utf8')).toBe(lines.join(''));
    expect((await stat(join(dir, 'ledger'))).mode & 0o777).toBe(0o600);
  });

  it('appends that arrive while an fsync runs wait for it and then share the next one', async () => {
    const log = new GroupCommitLog(join(dir, 'ledger'));
    const first = log.append('first\n');
    await nextTurn(); // the first group is on its way to the disk
    const later = Array.from({ length: 20 }, (_, i) => log.append(`later ${i}\n`));
    let firstDone = false;
    await first.then(() => (firstDone = true));
    expect(log.fsyncs).toBe(1);
    await Promise.all(later);
    expect(firstDone).toBe(true);
    expect(log.fsyncs).toBe(2);
    expect((await readFile(join(dir, 'ledger'), 'utf8')).split('\n')).toHaveLength(22);
  });

  it('a failed write rejects every append of its group; the next group writes again', async () => {
    const parent = join(dir, 'state');
    await writeFile(parent, 'a file where the directory should be');
    const log = new GroupCommitLog(join(parent, 'ledger'));
    const group = [log.append('a\n'), log.append('b\n')];
    for (const append of group) await expect(append).rejects.toThrow(/ENOTDIR/);
    await rm(parent);
    await mkdir(parent);
    await log.append('c\n');
    expect(await readFile(join(parent, 'ledger'), 'utf8')).toBe('c\n');
  });

  it('refuses appends past its queue bound at once, keeps the queued ones', async () => {
    const log = new GroupCommitLog(join(dir, 'ledger'), { maxQueuedBytes: 10 });
    const kept = log.append('12345678\n');
    await expect(log.append('ab\n')).rejects.toThrow(/append refused/);
    await kept;
    await log.append('ab\n'); // the queue is empty again
    expect(await readFile(join(dir, 'ledger'), 'utf8')).toBe('12345678\nab\n');
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
