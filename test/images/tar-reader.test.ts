import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it, vi } from 'vitest';
import { flattenLayers, type Layer } from '../../server/images/flatten.ts';
import { compareVersions, moduleNames, RootInspector } from '../../server/images/inspect.ts';
import { encodeHeader, END_OF_ARCHIVE, entryData, MAX_EXTENSION_BYTES, normalisePath, padded, readTar, type TarHeader } from '../../server/images/tar-reader.ts';
import { rawTar } from '../fixtures/images/hostile.ts';

const run = promisify(execFile);

function header(path: string, extra: Partial<TarHeader> = {}): Omit<TarHeader, 'typeflag'> {
  return { path, type: 'file', size: 0, mode: 0o644, uid: 0, gid: 0, mtime: 1700000000, linkname: '', devmajor: 0, devminor: 0, pax: {}, ...extra };
}

function tarOf(entries: { h: Omit<TarHeader, 'typeflag'>; data?: string }[]): Buffer {
  const parts: Buffer[] = [];
  for (const { h, data = '' } of entries) {
    const body = Buffer.from(data);
    parts.push(encodeHeader({ ...h, size: body.length }), body, Buffer.alloc(padded(body.length) - body.length));
  }
  parts.push(END_OF_ARCHIVE);
  return Buffer.concat(parts);
}

async function* chunked(buf: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

describe('tar reader', () => {
  it('round-trips long names, long link targets and binary xattrs that GNU tar reads back', async () => {
    const long = `${'d'.repeat(120)}/${'f'.repeat(90)}`;
    const cap = Buffer.from([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0xff, 0x80, 0, 0, 0, 0, 0, 0]);
    const tar = tarOf([
      { h: header(long, { mode: 0o4755, uid: 1000, gid: 100, pax: { 'SCHILY.xattr.security.capability': cap.toString('latin1') } }), data: 'hello' },
      { h: header('link', { type: 'symlink', linkname: `/${'t'.repeat(150)}` }) },
      { h: header('dev/null', { type: 'char', devmajor: 1, devminor: 3 }) },
    ]);
    // Chunks of 7 bytes: headers and data straddle chunk boundaries everywhere.
    const seen: { header: TarHeader; data: string }[] = [];
    for await (const entry of readTar(chunked(tar, 7))) {
      const parts: Buffer[] = [];
      for await (const c of entryData(entry)) parts.push(c);
      seen.push({ header: entry.header, data: Buffer.concat(parts).toString() });
    }
    expect(seen.map((s) => [s.header.path, s.header.type, s.data])).toEqual([
      [long, 'file', 'hello'],
      ['link', 'symlink', ''],
      ['dev/null', 'char', ''],
    ]);
    expect(seen[0]!.header).toMatchObject({ mode: 0o4755, uid: 1000, gid: 100, size: 5 });
    expect(Buffer.from(seen[0]!.header.pax['SCHILY.xattr.security.capability']!, 'latin1')).toEqual(cap);
    expect(seen[1]!.header.linkname).toBe(`/${'t'.repeat(150)}`);
    expect(seen[2]!.header).toMatchObject({ devmajor: 1, devminor: 3 });

    const dir = await mkdtemp(join(tmpdir(), 'netboot-tar-'));
    try {
      await writeFile(join(dir, 'x.tar'), tar);
      const { stdout } = await run('tar', ['-tvf', join(dir, 'x.tar')]);
      expect(stdout).toContain(long);
      expect(stdout).toContain(`link -> /${'t'.repeat(150)}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('reads what GNU tar writes (GNU long names, ./ prefixes) and rejects a cut archive', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'netboot-tar-'));
    try {
      const deep = join(dir, 'root', 'a'.repeat(80), 'b'.repeat(80));
      await mkdir(deep, { recursive: true });
      await writeFile(join(deep, 'file'), 'x'.repeat(3000));
      await run('tar', ['--format=gnu', '-C', join(dir, 'root'), '-cf', join(dir, 'g.tar'), '.']);
      const tar = await readFile(join(dir, 'g.tar'));
      const paths: string[] = [];
      for await (const entry of readTar(chunked(tar, 4096))) paths.push(entry.header.path);
      expect(paths).toEqual(['', 'a'.repeat(80), `${'a'.repeat(80)}/${'b'.repeat(80)}`, `${'a'.repeat(80)}/${'b'.repeat(80)}/file`]);
      const cut = tar.subarray(0, 2048 + 700);
      await expect(async () => {
        for await (const entry of readTar(chunked(cut, 512))) for await (const _ of entry.body()) void _;
      }).rejects.toThrow(/truncated tar archive/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('encodes owners too large for the octal fields as PAX records', async () => {
    const tar = tarOf([{ h: header('big', { uid: 100_000_000, gid: 3_000_000 }), data: 'x' }]);
    const seen: TarHeader[] = [];
    for await (const entry of readTar(chunked(tar, 512))) seen.push(entry.header);
    expect(seen.map((h) => [h.path, h.uid, h.gid, h.size])).toEqual([['big', 100_000_000, 3_000_000, 1]]);
    const dir = await mkdtemp(join(tmpdir(), 'netboot-tar-'));
    try {
      await writeFile(join(dir, 'x.tar'), tar);
      const { stdout } = await run('tar', ['--numeric-owner', '-tvf', join(dir, 'x.tar')]);
      expect(stdout).toContain('100000000/3000000');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('normalises paths without letting them climb above the root', () => {
    expect(normalisePath('./etc/passwd')).toBe('etc/passwd');
    expect(normalisePath('/usr//lib/')).toBe('usr/lib');
    expect(normalisePath('../../etc/shadow')).toBe('etc/shadow');
    expect(normalisePath('a/../../b')).toBe('b');
    expect(normalisePath('./')).toBe('');
  });
});

describe('layer flattening', () => {
  const layer = (name: string, tar: Buffer): Layer => ({ name, open: async () => chunked(tar, 1000) });

  it('whiteouts in a layer hide lower entries but not the layer\'s own; a file replacing a directory hides its children', async () => {
    const bottom = tarOf([
      { h: header('d', { type: 'dir', mode: 0o755 }) },
      { h: header('d/a'), data: 'a' },
      { h: header('d/b'), data: 'b' },
      { h: header('e', { type: 'dir' }) },
      { h: header('e/child'), data: 'c' },
    ]);
    const top = tarOf([
      { h: header('d/.wh.a') },
      { h: header('d/c'), data: 'new' },
      { h: header('e'), data: 'file now' },
    ]);
    const out: string[] = [];
    for await (const entry of flattenLayers([layer('bottom', bottom), layer('top', top)])) {
      const parts: Buffer[] = [];
      for await (const c of entryData(entry)) parts.push(c);
      out.push(`${entry.header.path}=${Buffer.concat(parts).toString()}`);
    }
    expect(out.sort()).toEqual(['d/b=b', 'd/c=new', 'd=', 'e=file now']);
  });
});

describe('kernel inspection helpers', () => {
  it('orders kernel versions naturally', () => {
    expect(['6.1.0-9-amd64', '6.1.0-10-amd64', '5.10.0-30-amd64', '6.10.0-1'].sort((a, b) => compareVersions(b, a))).toEqual([
      '6.10.0-1',
      '6.1.0-10-amd64',
      '6.1.0-9-amd64',
      '5.10.0-30-amd64',
    ]);
  });

  it('reads module names from modules.dep and modules.builtin, compressed or not', () => {
    const names = moduleNames(
      Buffer.from('kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko.zst\nkernel/drivers/net/net_failover.ko.zst:\nkernel/fs/overlayfs/overlay.ko.xz:\n'),
      Buffer.from('kernel/fs/squashfs/squashfs.ko\nkernel/drivers/net/e1000e/e1000e.ko\n'),
    );
    expect([...names].sort()).toEqual(['e1000e', 'net_failover', 'overlay', 'squashfs', 'virtio_net']);
  });

  const feed = (inspector: RootInspector, path: string, type: TarHeader['type'], content = '', linkname = '') => {
    const sink = inspector.observe({ ...header(path, { type, linkname, size: content.length }), typeflag: '0' });
    if (sink && content) sink(Buffer.from(content));
  };
  const modules = (inspector: RootInspector, version: string) => {
    for (const d of ['usr', 'usr/lib', 'usr/lib/modules', `usr/lib/modules/${version}`]) feed(inspector, d, 'dir');
    feed(inspector, `usr/lib/modules/${version}/modules.dep`, 'file', 'kernel/drivers/net/e1000/e1000.ko.xz:\nkernel/fs/overlayfs/overlay.ko.xz:\n');
    feed(inspector, `usr/lib/modules/${version}/modules.builtin`, 'file', 'kernel/fs/squashfs/squashfs.ko\n');
    feed(inspector, 'sbin', 'dir');
    feed(inspector, 'sbin/init', 'file', '#!');
  };
  const options = { init: '/sbin/init', initramfs: 'netboot' as const, label: 'image t (sha256:x...)' };

  it('finds the kernel of a bootc layout (/usr/lib/modules/<kver>/vmlinuz, no /boot) and its initramfs', () => {
    const inspector = new RootInspector();
    modules(inspector, '6.8.5-301.fc40.x86_64');
    feed(inspector, 'usr/lib/modules/6.8.5-301.fc40.x86_64/vmlinuz', 'file', 'BOOTC-KERNEL');
    feed(inspector, 'usr/lib/modules/6.8.5-301.fc40.x86_64/initramfs.img', 'file', 'DRACUT');
    const k = inspector.analyse(options);
    expect(k).toMatchObject({ version: '6.8.5-301.fc40.x86_64', kernelPath: '/usr/lib/modules/6.8.5-301.fc40.x86_64/vmlinuz' });
    expect(k.kernel.toString()).toBe('BOOTC-KERNEL');
    expect(k.imageInitrd?.toString()).toBe('DRACUT');
  });

  it('follows a /vmlinuz symlink to a kernel with no version in its name; the version comes from the modules dir', () => {
    const inspector = new RootInspector();
    modules(inspector, '6.6.1');
    feed(inspector, 'boot', 'dir');
    feed(inspector, 'boot/bzImage-custom', 'file', 'BZIMAGE');
    feed(inspector, 'vmlinuz', 'symlink', '', 'boot/bzImage-custom');
    const k = inspector.analyse(options);
    expect(k).toMatchObject({ version: '6.6.1', kernelPath: '/boot/bzImage-custom' });
    expect(k.kernel.toString()).toBe('BZIMAGE');
    const direct = new RootInspector();
    modules(direct, '6.6.1');
    feed(direct, 'boot', 'dir');
    feed(direct, 'boot/vmlinuz', 'file', 'PLAIN');
    feed(direct, 'vmlinuz', 'symlink', '', 'boot/vmlinuz');
    expect(direct.analyse(options)).toMatchObject({ version: '6.6.1', kernelPath: '/boot/vmlinuz' });
  });

  it('reports every missing piece at once: init, overlay, NIC driver', () => {
    const inspector = new RootInspector();
    for (const d of ['boot', 'usr', 'usr/lib', 'usr/lib/modules', 'usr/lib/modules/6.1.0-1']) feed(inspector, d, 'dir');
    feed(inspector, 'boot/vmlinuz-6.1.0-1', 'file', 'K');
    feed(inspector, 'usr/lib/modules/6.1.0-1/modules.builtin', 'file', 'kernel/fs/squashfs/squashfs.ko\n');
    expect(() => inspector.analyse(options)).toThrow(
      /^image t \(sha256:x\.\.\.\): no init: \/sbin\/init does not exist \(symlinks followed\).*; no overlay support in kernel 6\.1\.0-1: not found in \/usr\/lib\/modules\/6\.1\.0-1\/modules\.dep and modules\.builtin.*; no NIC driver for kernel 6\.1\.0-1: looked for virtio_net, e1000/,
    );
  });

  it('follows symlinks in every path component when looking for init', () => {
    const inspector = new RootInspector();
    const h = (path: string, type: TarHeader['type'], linkname = '') => ({ ...header(path, { type, linkname }), typeflag: '0' });
    inspector.observe(h('usr', 'dir'));
    inspector.observe(h('usr/lib', 'dir'));
    inspector.observe(h('usr/lib/systemd', 'dir'));
    inspector.observe(h('usr/lib/systemd/systemd', 'file'));
    inspector.observe(h('lib', 'symlink', 'usr/lib'));
    inspector.observe(h('sbin', 'symlink', 'usr/sbin'));
    inspector.observe(h('usr/sbin', 'dir'));
    inspector.observe(h('usr/sbin/init', 'symlink', '../lib/systemd/systemd'));
    inspector.observe(h('usr/sbin/loop', 'symlink', 'loop'));
    expect(inspector.resolve('/sbin/init')?.path).toBe('usr/lib/systemd/systemd');
    expect(inspector.resolve('/lib/systemd/systemd')?.path).toBe('usr/lib/systemd/systemd');
    expect(inspector.resolve('/sbin/loop')).toBeNull();
    expect(inspector.resolve('/sbin/missing')).toBeNull();
  });
});

describe('tar reader on hostile headers', () => {
  async function entries(tar: Buffer, chunk = 512): Promise<TarHeader[]> {
    const out: TarHeader[] = [];
    for await (const entry of readTar(chunked(tar, chunk))) out.push(entry.header);
    return out;
  }

  it('joins a large extended header once, not once per chunk (linear, whatever the chunk size)', async () => {
    const long = `${'p/'.repeat(1000)}${'n'.repeat(900_000)}`;
    const tar = rawTar([{ name: 'short', pax: { path: long }, data: 'x' }]);
    const concat = vi.spyOn(Buffer, 'concat');
    try {
      const [first] = await entries(tar, 512);
      expect(first!.path).toBe(long);
      // ~1800 chunks of 512 bytes: the old reader concatenated on each one (quadratic copying).
      expect(concat.mock.calls.length).toBeLessThan(20);
    } finally {
      concat.mockRestore();
    }
  });

  it('refuses extended headers over 1 MiB, and many small ones adding up past it, before reading them', async () => {
    await expect(entries(rawTar([{ name: 'x', gnuLongName: Buffer.alloc(MAX_EXTENSION_BYTES + 1, 0x61), data: 'x' }]))).rejects.toThrow(
      /^tar entry "\.\/\.\/@LongLink" at offset 0: extended header of 1048577 bytes \(limit 1048576\)$/,
    );
    // Each under the limit, together over it.
    const split = rawTar([{ name: 'x', gnuLongName: 'a'.repeat(600_000), pax: { comment: 'v'.repeat(600_000) }, data: 'x' }]);
    await expect(entries(split)).rejects.toThrow(/^tar entry "PaxHeader" at offset \d+: extended header of \d+ bytes \(limit 1048576\)$/);
  });

  it('rejects non-numeric sizes and ids (header or PAX) instead of losing sync', async () => {
    const smuggled = rawTar([{ name: 'smuggled', data: 'inside' }], { end: false });
    await expect(entries(rawTar([{ name: 'carrier', pax: { size: 'NaN' }, data: smuggled }]))).rejects.toThrow(
      /^tar entry "carrier" at offset 1024: size is not a number in a PAX record \("NaN"\)$/,
    );
    await expect(entries(rawTar([{ name: 'carrier', pax: { size: '12abc' }, data: smuggled }]))).rejects.toThrow(/size is not a number/);
    await expect(entries(rawTar([{ name: 'f', sizeField: '00000000x12\0', data: 'x' }]))).rejects.toThrow(/^tar entry "f" at offset 0: size field is not a number/);
    await expect(entries(rawTar([{ name: 'f', pax: { gid: '1e9' }, data: 'x' }]))).rejects.toThrow(/gid is not a number in a PAX record/);
    await expect(entries(rawTar([{ name: 'f', pax: { mtime: 'soon' }, data: 'x' }]))).rejects.toThrow(/mtime is not a number/);
    // Fractional PAX mtimes (GNU tar --format=posix) are fine.
    const [ok] = await entries(rawTar([{ name: 'f', pax: { mtime: '1700000000.123456789', size: '1' }, data: 'x' }]));
    expect(ok).toMatchObject({ mtime: 1_700_000_000, size: 1 });
  });

  it('refuses names with .. and hard links leaving the root; keeps escaping symlinks as they are', async () => {
    await expect(entries(rawTar([{ name: 'a/../../b', data: 'x' }]))).rejects.toThrow(/^tar entry "a\/\.\.\/\.\.\/b" at offset 0: the name leaves the root/);
    await expect(entries(rawTar([{ name: 'h', type: 'link', linkname: '../a' }]))).rejects.toThrow(/hard link target "\.\.\/a" is outside the root/);
    await expect(entries(rawTar([{ name: 'h', type: 'link', linkname: '/a' }]))).rejects.toThrow(/hard link target "\/a" is outside the root/);
    await expect(entries(rawTar([{ name: 'h', type: 'link', linkname: './' }]))).rejects.toThrow(/hard link target "\.\/" is outside the root/);
    const [link, abs] = await entries(rawTar([{ name: 's', type: 'symlink', linkname: '../../../etc/shadow' }, { name: '/abs/name', data: 'x' }]));
    expect(link).toMatchObject({ path: 's', type: 'symlink', linkname: '../../../etc/shadow' });
    expect(abs!.path).toBe('abs/name');
  });
});
