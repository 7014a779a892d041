import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { normalizeCpioPath, writeCpio, type CpioEntry } from '../../server/initramfs/cpio.ts';

const run = promisify(execFile);

const ENTRIES: CpioEntry[] = [
  { type: 'file', path: 'init', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
  { type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
  { type: 'block', path: 'dev/loop0', major: 7, minor: 0 },
  { type: 'symlink', path: 'bin/sh', target: 'busybox' },
  { type: 'file', path: 'bin/busybox', data: Buffer.alloc(4099, 7), mode: 0o755 },
  { type: 'file', path: 'données/été.txt', data: Buffer.from('café\n') },
  { type: 'file', path: '日本語/ファイル', data: Buffer.from('x') },
  { type: 'file', path: 'empty', data: Buffer.alloc(0) },
  { type: 'dir', path: 'tmp', mode: 0o1777 },
];

describe('cpio newc writer', () => {
  let dir: string;
  let archive: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'netboot-cpio-'));
    archive = join(dir, 'test.cpio');
    await writeFile(archive, writeCpio(ENTRIES));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('is listed by GNU cpio with every name byte-correct, parents added, sorted', async () => {
    const { stdout } = await run('cpio', ['-it', '--quiet', '-F', archive]);
    expect(stdout.split('\n').filter(Boolean)).toEqual([
      'bin',
      'bin/busybox',
      'bin/sh',
      'dev',
      'dev/console',
      'dev/loop0',
      'données',
      'données/été.txt',
      'empty',
      'init',
      'tmp',
      '日本語',
      '日本語/ファイル',
    ]);
  });

  it('is read by bsdtar with types, modes, devices, owners and mtime as written', async () => {
    const { stdout } = await run('bsdtar', ['-tvf', archive, '--numeric-owner'], { env: { ...process.env, TZ: 'UTC', LC_ALL: 'C.UTF-8' } });
    const line = (name: string) => stdout.split('\n').find((l) => l.endsWith(` ${name}`) || l.includes(` ${name} -> `)) ?? '';
    expect(line('dev/console')).toMatch(/^crw------- +1 0 +0 +5, ?1 /);
    expect(line('dev/loop0')).toMatch(/^brw------- +1 0 +0 +7, ?0 /);
    expect(line('bin/sh')).toMatch(/^lrwxrwxrwx .* bin\/sh -> busybox$/);
    expect(line('init')).toMatch(/^-rwxr-xr-x +1 0 +0 +18 Jan +1 +1970 init$/);
    expect(line('tmp')).toMatch(/^drwxrwxrwt /);
  });

  it('extracts to the same bytes, including non-ASCII names', async () => {
    const out = join(dir, 'x');
    await run('sh', ['-c', `mkdir -p "$1" && cd "$1" && cpio -id --quiet --no-absolute-filenames < "$2"`, 'sh', out, archive]);
    expect(await readFile(join(out, 'données/été.txt'), 'utf8')).toBe('café\n');
    expect(await readFile(join(out, '日本語/ファイル'), 'utf8')).toBe('x');
    expect(await readFile(join(out, 'bin/busybox'))).toEqual(Buffer.alloc(4099, 7));
    expect((await readFile(join(out, 'empty'))).length).toBe(0);
    expect(await readlink(join(out, 'bin/sh'))).toBe('busybox');
    expect((await stat(join(out, 'init'))).mode & 0o777).toBe(0o755);
  });

  it('pads every record to 4 bytes and ends with TRAILER!!!', async () => {
    const data = writeCpio(ENTRIES);
    expect(data.length % 4).toBe(0);
    let offset = 0;
    const names: string[] = [];
    while (offset < data.length) {
      expect(data.toString('ascii', offset, offset + 6)).toBe('070701');
      const field = (i: number) => parseInt(data.toString('ascii', offset + 6 + i * 8, offset + 14 + i * 8), 16);
      const [filesize, namesize] = [field(6), field(11)];
      const name = data.toString('utf8', offset + 110, offset + 110 + namesize - 1);
      names.push(name);
      offset += 110 + namesize;
      offset += (4 - (offset % 4)) % 4;
      offset += filesize;
      offset += (4 - (offset % 4)) % 4;
      if (name === 'TRAILER!!!') break;
    }
    expect(offset).toBe(data.length);
    expect(names.at(-1)).toBe('TRAILER!!!');
  });

  it('is byte-identical whatever the input order', () => {
    expect(writeCpio([...ENTRIES].reverse()).equals(writeCpio(ENTRIES))).toBe(true);
  });

  it('refuses paths that escape the root, duplicates, and entries below a file', () => {
    expect(() => normalizeCpioPath('../etc/passwd')).toThrow(/escapes/);
    expect(normalizeCpioPath('/./a//b/')).toBe('a/b');
    expect(() => writeCpio([{ type: 'dir', path: 'a' }, { type: 'dir', path: '/a/' }])).toThrow(/duplicate/);
    expect(() => writeCpio([{ type: 'file', path: 'a', data: Buffer.from('') }, { type: 'dir', path: 'a/b' }])).toThrow(/non-directory/);
  });
});
