import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSquashfsFile } from '../../server/images/squashfs-reader.ts';
import { BASE_MODULES, BOOT_ASSETS_DIR, buildInitrd, DEFAULT_NIC_MODULES, initrdBuilderFingerprint } from '../../server/initramfs/build.ts';
import { decompressModule, ModuleIndex, moduleRefFromPath } from '../../server/initramfs/modules.ts';
import { debianKernelFixture, type KernelFixture } from './fixture.ts';

const run = promisify(execFile);

function pipe(cmd: string, args: string[], input: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { encoding: 'buffer', maxBuffer: 1 << 30 }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
    child.stdin?.end(input);
  });
}

describe('module index on a real Debian kernel', () => {
  let fixture: KernelFixture;
  let index: ModuleIndex;
  let depText: string;
  beforeAll(async () => {
    fixture = await debianKernelFixture();
    const read = (path: string) => readSquashfsFile(fixture.squashfs, path);
    index = await ModuleIndex.load(read, fixture.kernelVersion);
    depText = (await read(`${index.dir}/modules.dep`)).toString();
  }, 600_000);

  it('finds the index under /usr/lib/modules and tells modules from built-ins', () => {
    expect(index.dir).toBe(`/usr/lib/modules/${fixture.kernelVersion}`);
    expect(index.has('virtio_net')).toBe('module');
    expect(index.has('virtio-net')).toBe('module');
    expect(index.has('af_packet')).toBe('builtin');
    expect(index.has('no_such_driver')).toBeNull();
  });

  it('ships the disk modules (ext4 with its crc32c, dm_verity, virtio_blk, nvme) and skips those whose files the image left out', async () => {
    // The fixture dropped kernel/drivers/scsi: sd_mod, ahci, ata_piix and virtio_scsi cannot load, the image still builds.
    const read = (path: string) => readSquashfsFile(fixture.squashfs, path);
    const build = await buildInitrd({ readImageFile: read, kernelVersion: fixture.kernelVersion, compression: 'gzip' });
    expect(build.modules).toEqual(expect.arrayContaining(['ext4', 'jbd2', 'mbcache', 'crc16', 'crc32c_generic', 'dm_verity', 'dm_mod', 'dm_bufio', 'virtio_blk', 'nvme']));
    expect(build.unavailable).toEqual(expect.arrayContaining(['sd_mod', 'ahci', 'ata_piix', 'virtio_scsi']));
    expect(build.modules).not.toContain('scsi_mod');
    // A module /init cannot do without is still fatal when its file is missing.
    const withoutSquashfs = (path: string) => (path.endsWith('/squashfs.ko') || path.endsWith('/squashfs.ko.xz') ? Promise.reject(new Error('gone')) : read(path));
    await expect(buildInitrd({ readImageFile: withoutSquashfs, kernelVersion: fixture.kernelVersion, compression: 'gzip' })).rejects.toThrow(/module squashfs listed in .*modules\.dep but unreadable/);
  }, 300_000);

  it('orders virtio_net after its dependencies, failover before net_failover', () => {
    const names = index.closure(['virtio_net']).map((ref) => ref.name);
    expect(names.at(-1)).toBe('virtio_net');
    expect(new Set(names)).toEqual(new Set(['virtio', 'virtio_ring', 'failover', 'net_failover', 'virtio_net']));
    expect(names.indexOf('failover')).toBeLessThan(names.indexOf('net_failover'));
    expect(names.indexOf('virtio')).toBeLessThan(names.indexOf('virtio_ring'));
  });

  it('loads every module of the default set after all its modules.dep dependencies, each once, skipping built-ins', () => {
    const refs = index.closure([...BASE_MODULES, ...DEFAULT_NIC_MODULES]);
    const position = new Map(refs.map((ref, i) => [ref.path, i]));
    expect(position.size).toBe(refs.length);
    expect(refs.some((ref) => ref.name === 'af_packet')).toBe(false);
    for (const line of depText.split('\n')) {
      const [target, deps = ''] = line.split(':');
      if (!target || !position.has(target)) continue;
      for (const dep of deps.trim().split(/\s+/).filter(Boolean)) {
        expect(position.get(dep), `${dep} before ${target}`).toBeLessThan(position.get(target)!);
      }
    }
    expect(refs.map((ref) => ref.name)).toEqual(expect.arrayContaining(['mlx5_core', 'mlxfw', 'e1000e', 'ice', 'squashfs', 'overlay', 'loop', 'nbd']));
  });

  it('trims modules.dep and modules.alias to what is shipped', () => {
    const refs = index.closure(['virtio_net']);
    expect(index.trimmedDep(refs)).toContain('kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko');
    const aliases = index.trimmedAlias(refs).trim().split('\n');
    expect(aliases).toContain('alias virtio:d00000001v* virtio_net');
    expect(aliases.every((line) => /^alias \S+ (virtio_net|net_failover|failover|virtio|virtio_ring)$/.test(line))).toBe(true);
  });
});

describe('compressed modules', () => {
  let fixture: KernelFixture;
  let root: string;
  let plain: Buffer;
  const kver = '9.9.9-netboot-test';
  beforeAll(async () => {
    fixture = await debianKernelFixture();
    plain = await readSquashfsFile(fixture.squashfs, `/usr/lib/modules/${fixture.kernelVersion}/kernel/drivers/net/virtio_net.ko`);
    root = await mkdtemp(join(tmpdir(), 'netboot-modules-'));
    // /lib/modules (not /usr/lib) so the fallback location is exercised too.
    const dir = join(root, 'lib/modules', kver);
    await mkdir(join(dir, 'kernel/a'), { recursive: true });
    await writeFile(join(dir, 'kernel/a/x-xz.ko.xz'), await pipe('xz', ['-c', '--check=crc32'], plain));
    await writeFile(join(dir, 'kernel/a/z-zst.ko.zst'), await pipe('zstd', ['-c', '-q'], plain));
    await writeFile(join(dir, 'kernel/a/g_gz.ko.gz'), gzipSync(plain));
    await writeFile(
      join(dir, 'modules.dep'),
      'kernel/a/x-xz.ko.xz: kernel/a/z-zst.ko.zst kernel/a/g_gz.ko.gz\nkernel/a/z-zst.ko.zst: kernel/a/g_gz.ko.gz\nkernel/a/g_gz.ko.gz:\n',
    );
    await writeFile(join(dir, 'modules.alias'), 'alias pci:v00001234d* x_xz\nalias usb:v9999* unrelated\n');
    await writeFile(join(dir, 'modules.builtin'), 'kernel/net/packet/af_packet.ko\n');
  }, 600_000);
  afterAll(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('recognises .ko.xz, .ko.zst, .ko.gz and names them with underscores', () => {
    expect(moduleRefFromPath('kernel/a/x-xz.ko.xz')).toEqual({ name: 'x_xz', path: 'kernel/a/x-xz.ko.xz', compression: 'xz', shippedPath: 'kernel/a/x-xz.ko' });
    expect(moduleRefFromPath('kernel/a/z.ko.zst')?.compression).toBe('zstd');
    expect(moduleRefFromPath('kernel/a/README')).toBeNull();
  });

  it('decompresses each format back to the original ELF module', async () => {
    const dir = join(root, 'lib/modules', kver, 'kernel/a');
    expect((await decompressModule(await readFile(join(dir, 'x-xz.ko.xz')), 'xz')).equals(plain)).toBe(true);
    expect((await decompressModule(await readFile(join(dir, 'z-zst.ko.zst')), 'zstd')).equals(plain)).toBe(true);
    expect((await decompressModule(await readFile(join(dir, 'g_gz.ko.gz')), 'gzip')).equals(plain)).toBe(true);
  });

  it('ships them as plain .ko in the initramfs with modules.dep/alias renamed to match, reproducibly', async () => {
    const readImageFile = (path: string) => readFile(join(root, path));
    const build = () => buildInitrd({ readImageFile, kernelVersion: kver, nics: ['x-xz', 'af_packet', 'absent_nic'], compression: 'gzip',
        extraFiles: [{ path: 'bin/extra-tool', mode: 0o100755, data: Buffer.from('#!/bin/sh\n') }] });
    const first = await build();
    expect(first.modules).toEqual(['g_gz', 'z_zst', 'x_xz']);
    expect(first.builtin).toEqual(['af_packet']);
    expect(first.unavailable).toEqual(expect.arrayContaining(['absent_nic', 'squashfs', 'overlay']));
    expect((await build()).image.equals(first.image)).toBe(true);

    const out = join(root, 'unpacked');
    await mkdir(out);
    await writeFile(join(root, 'initrd.cpio'), gunzipSync(first.image));
    await run('sh', ['-c', `cd "$1" && cpio -id --quiet --no-absolute-filenames < "$2"`, 'sh', out, join(root, 'initrd.cpio')]);
    const mods = join(out, 'lib/modules', kver);
    for (const name of ['x-xz.ko', 'z-zst.ko', 'g_gz.ko']) expect((await readFile(join(mods, 'kernel/a', name))).equals(plain)).toBe(true);
    expect(await readFile(join(mods, 'modules.dep'), 'utf8')).toBe(
      'kernel/a/g_gz.ko:\nkernel/a/x-xz.ko: kernel/a/z-zst.ko kernel/a/g_gz.ko\nkernel/a/z-zst.ko: kernel/a/g_gz.ko\n',
    );
    expect(await readFile(join(mods, 'modules.alias'), 'utf8')).toBe('alias pci:v00001234d* x_xz\n');

    // The rest of the initramfs: busybox with applets, /init and its helpers, /dev/console.
    const { stdout } = await run('bsdtar', ['-tvf', join(root, 'initrd.cpio')]);
    expect(stdout).toMatch(/^crw------- .* 5, ?1 .* dev\/console$/m);
    expect(stdout).toMatch(/^lrwxrwxrwx .* bin\/udhcpc -> busybox$/m);
    expect(stdout).toMatch(/^-rwxr-xr-x .* init$/m);
    expect(stdout).toMatch(/^-rwxr-xr-x .* lib\/netboot\/udhcpc.script$/m);
    expect(stdout).toMatch(/^-rw-r--r-- .* lib\/netboot\/common.sh$/m);
    expect(stdout).toMatch(/^-rwxr-xr-x .* bin\/extra-tool$/m);
  });
});

describe('initrd builder fingerprint', () => {
  it('is stable, and changes when /init changes', async () => {
    const copy = await mkdtemp(join(tmpdir(), 'netboot-assets-'));
    try {
      await run('cp', ['-a', `${BOOT_ASSETS_DIR}/.`, copy]);
      const first = await initrdBuilderFingerprint('/bin/busybox', copy);
      expect(await initrdBuilderFingerprint('/bin/busybox', copy)).toBe(first);
      expect(await initrdBuilderFingerprint()).toBe(first);
      await writeFile(join(copy, 'init'), (await readFile(join(copy, 'init'), 'utf8')) + '# edited\n');
      expect(await initrdBuilderFingerprint('/bin/busybox', copy)).not.toBe(first);
    } finally {
      await rm(copy, { recursive: true, force: true });
    }
  });
});

describe('module decompression limits', () => {
  // 65 MiB of zeros: one MiB over the cap, a few KiB compressed (a decompression bomb in miniature).
  const bomb = Buffer.alloc(65 << 20);

  it('refuses a module that decompresses past 64 MiB, naming it, in every format', async () => {
    const packed = {
      gzip: gzipSync(bomb),
      xz: await pipe('xz', ['-c', '-1'], bomb),
      zstd: await pipe('zstd', ['-c', '-1'], bomb),
    };
    for (const [format, data] of Object.entries(packed)) {
      expect(data.length).toBeLessThan(1 << 20);
      await expect(decompressModule(data, format as 'gzip' | 'xz' | 'zstd', `module bomb_${format}`)).rejects.toThrow(
        new RegExp(`^module bomb_${format}: decompresses to more than ${64 << 20} bytes`),
      );
    }
    await expect(decompressModule(bomb, 'none', 'module plain')).rejects.toThrow(/^module plain: decompresses to more than/);
    // Just under the cap is fine.
    const fits = Buffer.alloc(63 << 20, 1);
    expect((await decompressModule(gzipSync(fits), 'gzip')).equals(fits)).toBe(true);
  }, 60_000);

  it('decompresses gzip off the event loop (timers run while it works)', async () => {
    const data = gzipSync(Buffer.alloc(60 << 20));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    try {
      const out = await decompressModule(data, 'gzip');
      expect(out.length).toBe(60 << 20);
    } finally {
      clearInterval(timer);
    }
    // gunzipSync would finish before any timer could run.
    expect(ticks).toBeGreaterThan(0);
  }, 60_000);

  it('reports corrupt data as an error naming the module', async () => {
    await expect(decompressModule(Buffer.from('not gzip at all'), 'gzip', 'module junk')).rejects.toThrow(/^module junk: gzip: /);
    await expect(decompressModule(Buffer.from('not xz at all'), 'xz', 'module junk')).rejects.toThrow(/^module junk: xz -d -c -q failed/);
  });
});
