/**
 * The nbd-client bundle for the initramfs: complete (runs in an otherwise empty root with no
 * ld.so.cache), compatible with our cpio writer and the initramfs layout (usr/sbin -> ../bin).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeCpio, type CpioEntry } from '../../server/initramfs/cpio.ts';
import { nbdClientFiles, parseLddOutput, type InitramfsFile } from '../../server/initramfs/nbd-client.ts';
import { startServer, type ServerFixture } from './helpers.ts';

const run = promisify(execFile);

describe('parseLddOutput', () => {
  it('takes resolved libraries and the loader, skips the vdso', () => {
    const out = [
      '\tlinux-vdso.so.1 (0x00007ffd)',
      '\tlibnl-3.so.200 => /lib/x86_64-linux-gnu/libnl-3.so.200 (0x00007f6b1215b000)',
      '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6b11c1e000)',
      '\t/lib64/ld-linux-x86-64.so.2 (0x00007f6b121aa000)',
      '',
    ].join('\n');
    expect(parseLddOutput(out)).toEqual(['/lib/x86_64-linux-gnu/libnl-3.so.200', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']);
  });

  it('refuses output with a missing library', () => {
    expect(() => parseLddOutput('\tlibfoo.so.1 => not found\n')).toThrow(/missing shared library/);
  });
});

describe('nbdClientFiles', () => {
  let files: InitramfsFile[];
  let fx: ServerFixture;
  let root: string;

  beforeAll(async () => {
    files = await nbdClientFiles();
    fx = await startServer({ 'image-a': 4096 });
    root = await mkdtemp(join(tmpdir(), 'nbd-client-root-'));
  });
  afterAll(async () => {
    await fx?.close();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('has the binary, the loader and libc as regular ELF files, sorted, with sane modes', () => {
    const paths = files.map((f) => f.path);
    expect(paths).toEqual([...paths].sort());
    expect(paths).toContain('bin/nbd-client');
    expect(paths).toContain('lib64/ld-linux-x86-64.so.2');
    expect(paths.some((p) => /^lib\/x86_64-linux-gnu\/libc\.so\.6$/.test(p) || /^usr\/lib\/.*libc\.so\.6$/.test(p))).toBe(true);
    for (const f of files) {
      expect(f.data.subarray(0, 4), f.path).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
      expect(f.mode & ~0o7777).toBe(0);
      expect(f.mode & 0o400).toBe(0o400);
    }
    expect(files.find((f) => f.path === 'bin/nbd-client')!.mode & 0o111).not.toBe(0);
    const total = files.reduce((n, f) => n + f.data.length, 0);
    expect(total).toBeGreaterThan(1_000_000);
    expect(total).toBeLessThan(20_000_000);
  });

  it('written by our cpio writer next to the initramfs symlinks, runs chrooted as /usr/sbin/nbd-client and lists our exports', async () => {
    const entries: CpioEntry[] = [
      { type: 'symlink', path: 'sbin', target: 'bin' },
      { type: 'symlink', path: 'usr/bin', target: '../bin' },
      { type: 'symlink', path: 'usr/sbin', target: '../bin' },
      ...files.map((f): CpioEntry => ({ type: 'file', path: f.path, data: f.data, mode: f.mode })),
    ];
    const archive = join(root, '..', `${root.split('/').pop()}.cpio`);
    await writeFile(archive, writeCpio(entries));
    try {
      await run('sh', ['-c', `cd "${root}" && cpio -idm --quiet < "${archive}"`]);
    } finally {
      await rm(archive, { force: true });
    }
    const { stdout } = await run('chroot', [root, '/usr/sbin/nbd-client', '-l', '127.0.0.1', String(fx.port)], { timeout: 20_000 });
    expect(stdout.split('\n')).toContain('image-a');
  });
});
