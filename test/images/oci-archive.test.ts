import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../server/config/types.ts';
import { silentLogger } from '../../server/log.ts';
import { ImageCache } from '../../server/images/cache.ts';
import { readSquashfsFile } from '../../server/images/squashfs-reader.ts';
import { syntheticOciArchive } from '../fixtures/images/oci-synthetic.ts';
import { squashfsListing } from './listing.ts';

const run = promisify(execFile);

function image(name: string, source: string, extra: Partial<Image> = {}): Image {
  return { name, source, cmdline: '', root: 'ram', initramfs: 'netboot', init: '/sbin/init', compression: 'zstd', platform: 'linux/amd64', ...extra };
}

/** Every file under dir with its sha256: "the cache is untouched" means this is unchanged. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const p = join(d, entry.name);
      if (entry.isDirectory()) await walk(p);
      else out[p.slice(dir.length)] = createHash('sha256').update(await readFile(p)).digest('hex');
    }
  };
  await walk(dir);
  return out;
}

describe('oci-archive: a synthetic multi-layer OCI image', () => {
  let work: string;
  let archive: string;
  let cache: ImageCache;
  let squashfs: string;
  let id: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'netboot-oci-test-'));
    archive = join(work, 'image.tar');
    await syntheticOciArchive(archive);
    cache = new ImageCache({ cacheDir: join(work, 'cache'), log: silentLogger });
    const built = await cache.build(image('synth', `oci-archive:${archive}`));
    id = built.id;
    squashfs = cache.artifactPath(id, 'rootfs.squashfs');
  }, 120_000);

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('applies whiteouts, opaque directories and replacements like overlayfs', async () => {
    const listing = await squashfsListing(squashfs, { mtime: false });
    const paths = [...listing.keys()].sort();
    expect(paths).toContain('a/keep');
    expect(paths).toContain('a/sub2/y');
    expect(paths).not.toContain('a/gone');
    expect(paths.filter((p) => p.startsWith('a/sub/') || p === 'a/sub')).toEqual([]);
    expect(paths.filter((p) => p.startsWith('opq/'))).toEqual(['opq/new']);
    expect(paths.filter((p) => p.startsWith('dir2file'))).toEqual(['dir2file']);
    expect(paths.some((p) => p.includes('.wh.'))).toBe(false);
    expect((await readSquashfsFile(squashfs, '/replaced/file')).toString()).toBe('v2');
    expect((await readSquashfsFile(squashfs, '/dir2file')).toString()).toBe('now a file');
  });

  it('keeps hard links to a file a higher layer replaced pointing at the old content', async () => {
    expect((await readSquashfsFile(squashfs, '/hl/target')).toString()).toBe('new content');
    expect((await readSquashfsFile(squashfs, '/hl/link')).toString()).toBe('old content');
    expect((await readSquashfsFile(squashfs, '/hl/link2')).toString()).toBe('old content');
    const inode = async (p: string) => /Inode number: (\d+)/i.exec((await run('rdsquashfs', ['-s', p, squashfs])).stdout)?.[1];
    expect(await inode('/hl/link')).toMatch(/^\d+$/);
    expect(await inode('/hl/link')).toBe(await inode('/hl/link2'));
    expect(await inode('/hl/link')).not.toBe(await inode('/hl/target'));
  });

  it('keeps the file capability xattr, device nodes, fifos and symlinks', async () => {
    const { stdout } = await run('rdsquashfs', ['-x', '/bin/ping', squashfs]);
    expect(stdout).toContain('security.capability');
    const listing = await squashfsListing(squashfs, { mtime: false });
    expect(listing.get('bin/ping')).toMatch(/security\.capability=/);
    expect(listing.get('dev/null-test')).toMatch(/^character-device 666 0:0 0 +dev 1,3/);
    expect(listing.get('dev/fifo-test')).toMatch(/^fifo 600 /);
    expect(listing.get('sbin/init')).toMatch(/-> \/lib\/systemd\/systemd/);
    expect(listing.get('lib')).toMatch(/-> usr\/lib/);
  });

  it('extracts the newest kernel, its config, and writes a manifest with sizes and hashes', async () => {
    expect((await readFile(cache.artifactPath(id, 'vmlinuz'))).toString()).toBe('KERNEL-6.10');
    expect((await readFile(cache.artifactPath(id, 'config'))).toString()).toContain('6.10.0-test');
    const manifest = (await cache.manifest(id))!;
    expect(manifest.kernelVersion).toBe('6.10.0-test');
    expect(manifest.kernelVersions).toEqual(['6.10.0-test', '6.1.0-test']);
    expect(manifest.source).toBe(`oci-archive:${archive}`);
    expect(manifest.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const rootfs = await readFile(squashfs);
    expect(manifest.artifacts['rootfs.squashfs']).toEqual({ size: rootfs.length, sha256: createHash('sha256').update(rootfs).digest('hex') });
    expect(await cache.currentId('synth')).toBe(id);
  });

  it('writes the dm-verity tree of the squashfs, which veritysetup verifies against the root hash in the manifest', async () => {
    const manifest = (await cache.manifest(id))!;
    const tree = cache.artifactPath(id, 'rootfs.verity');
    expect(manifest.verity).toMatchObject({ algorithm: 'sha256', blockSize: 4096, dataBlocks: (await stat(squashfs)).size / 4096 });
    expect(manifest.artifacts['rootfs.verity']?.size).toBe((await stat(tree)).size);
    const verify = (root: string) =>
      run('veritysetup', ['verify', '--no-superblock', `--salt=${manifest.verity!.salt}`, '--data-block-size=4096', '--hash-block-size=4096', `--data-blocks=${manifest.verity!.dataBlocks}`, squashfs, tree, root]);
    await verify(manifest.verity!.rootHash);
    await expect(verify('0'.repeat(64))).rejects.toThrow(/Verification of root hash failed|verification failed/i);
  });

  it('builds the configured kernel when asked, under a different id', async () => {
    const built = await cache.build(image('synth-old', `oci-archive:${archive}`, { kernel: '6.1.0-test' }));
    expect(built.id).not.toBe(id);
    expect((await readFile(cache.artifactPath(built.id, 'vmlinuz'))).toString()).toBe('KERNEL-6.1');
    await expect(cache.build(image('synth-x', `oci-archive:${archive}`, { kernel: '5.0' }))).rejects.toThrow(
      /kernel 5\.0 \(from config\) is not in the image; it has: 6\.10\.0-test, 6\.1\.0-test/,
    );
  });

  it('picks the manifest by its config when the index names no platform (docker save 25+)', async () => {
    const plain = join(work, 'no-platform.tar');
    await syntheticOciArchive(plain, { noPlatformInIndex: true });
    const built = await cache.build(image('synth-np', `oci-archive:${plain}`, { compression: 'lz4' }));
    expect(built.manifest.kernelVersion).toBe('6.10.0-test');
    await expect(cache.build(image('synth-np', `oci-archive:${plain}`, { platform: 'linux/arm64' }))).rejects.toThrow(/no manifest for platform linux\/arm64/);
  });

  it('is a cache hit the second time, and concurrent requests build once', async () => {
    const again = await cache.build(image('synth', `oci-archive:${archive}`));
    expect(again).toMatchObject({ id, cached: true });
    const fresh = new ImageCache({ cacheDir: join(work, 'cache2'), log: silentLogger });
    const [a, b] = await Promise.all([
      fresh.build(image('one', `oci-archive:${archive}`, { compression: 'lz4' })),
      fresh.build(image('two', `oci-archive:${archive}`, { compression: 'lz4' })),
    ]);
    expect(a.id).toBe(b.id);
    expect([a.cached, b.cached]).toEqual([false, false]); // both got the one build's result
    expect((await fresh.list()).map((x) => x.id)).toEqual([a.id]);
  });

  it('a makeInitrd hook writes initrd.img into the build before it is published', async () => {
    let seen: { kernelVersion: string; squashfsExists: boolean } | undefined;
    const built = await cache.build(image('synth-hook', `oci-archive:${archive}`), {
      makeInitrd: async (ctx) => {
        seen = { kernelVersion: ctx.kernelVersion, squashfsExists: (await stat(ctx.squashfs)).size > 0 };
        const { writeFile } = await import('node:fs/promises');
        await writeFile(join(ctx.outDir, 'initrd.img'), 'INITRD');
      },
    });
    expect(seen).toEqual({ kernelVersion: '6.10.0-test', squashfsExists: true });
    expect((await readFile(cache.artifactPath(built.id, 'initrd.img'))).toString()).toBe('INITRD');
    expect(built.manifest.artifacts['initrd.img']?.size).toBe(6);
  });

  it('waits for another process building the same id, and takes over a lock whose holder died', async () => {
    const fresh = new ImageCache({ cacheDir: join(work, 'cache-lock'), log: silentLogger });
    const target = image('locked', `oci-archive:${archive}`, { compression: 'lz4' });
    const { id: lockedId } = await fresh.idFor(target);
    const holder = spawn('sleep', ['300'], { stdio: 'ignore' });
    try {
      await mkdir(join(work, 'cache-lock', 'images'), { recursive: true });
      await writeFile(join(work, 'cache-lock', 'images', `.${lockedId}.lock`), String(holder.pid));
      const phases: string[] = [];
      const building = fresh.build(target, { onProgress: (p) => phases.push(p.phase) });
      await new Promise((r) => setTimeout(r, 700));
      expect(phases).toEqual(['resolve']); // still waiting for the other builder
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
      const built = await building;
      expect(built).toMatchObject({ id: lockedId, cached: false });
      expect(phases).toContain('squashfs');
      expect(await readdir(join(work, 'cache-lock', 'images'))).toEqual([lockedId, 'locked.current']);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('an interrupted build leaves no temp dir behind and publishes nothing', async () => {
    const fresh = new ImageCache({ cacheDir: join(work, 'cache-abort'), log: silentLogger });
    const controller = new AbortController();
    await expect(
      fresh.build(image('aborted', `oci-archive:${archive}`), {
        signal: controller.signal,
        onProgress: (p) => p.phase === 'squashfs' && controller.abort(new Error('stopped by test')),
      }),
    ).rejects.toThrow(/stopped by test/);
    expect(await readdir(join(work, 'cache-abort', 'images'))).toEqual([]);
    expect(await fresh.currentId('aborted')).toBeNull();
  });

  it('gc removes ids nothing references, keeping current ones and the last N', async () => {
    const fresh = new ImageCache({ cacheDir: join(work, 'cache-gc'), log: silentLogger });
    const a = await fresh.build(image('a', `oci-archive:${archive}`, { compression: 'lz4' }));
    const b = await fresh.build(image('a', `oci-archive:${archive}`, { compression: 'gzip' })); // a's current is now b
    const c = await fresh.build(image('c', `oci-archive:${archive}`, { kernel: '6.1.0-test', compression: 'lz4' }));
    expect(new Set([a.id, b.id, c.id]).size).toBe(3);
    expect(await fresh.gc(new Set(), 0)).toEqual([a.id]); // b and c are current ids of names
    expect((await fresh.list()).map((x) => x.id).sort()).toEqual([b.id, c.id].sort());
    await rm(join(work, 'cache-gc', 'images', 'c.current'));
    expect(await fresh.gc(new Set([c.id]), 0)).toEqual([]);
    expect(await fresh.gc(new Set(), 0)).toEqual([c.id]);
  });

  describe('bad inputs fail clearly and leave the cache untouched', () => {
    let before: Record<string, string>;
    beforeAll(async () => {
      before = await snapshot(join(work, 'cache'));
    });

    const expectUntouched = async () => {
      expect(await snapshot(join(work, 'cache'))).toEqual(before);
      expect(await cache.currentId('synth')).toBe(id);
    };

    it('a truncated archive', async () => {
      const cut = join(work, 'truncated.tar');
      await copyFile(archive, cut);
      await truncate(cut, Math.floor((await stat(archive)).size / 2));
      await expect(cache.build(image('synth', `oci-archive:${cut}`))).rejects.toThrow(/truncated archive/);
      await expectUntouched();
    });

    it('a layer whose content does not match its digest', async () => {
      const bad = join(work, 'corrupt.tar');
      await syntheticOciArchive(bad, { corruptLayer: true });
      await expect(cache.build(image('synth', `oci-archive:${bad}`))).rejects.toThrow(/layer sha256:[0-9a-f]{64} digest mismatch: expected sha256:[0-9a-f]{64}, got sha256:/);
      await expectUntouched();
    });

    it('an image without a kernel', async () => {
      const bad = join(work, 'nokernel.tar');
      await syntheticOciArchive(bad, { noKernel: true });
      await expect(cache.build(image('synth', `oci-archive:${bad}`))).rejects.toThrow(
        /^image synth \(sha256:[0-9a-f]{12}\.\.\.\): no kernel: looked in \/boot\/vmlinuz-\*, \/vmlinuz, \/usr\/lib\/modules\/\*\/vmlinuz — install a kernel package/,
      );
      await expectUntouched();
    });

    it('an image whose init is missing, and one without a NIC driver', async () => {
      await expect(cache.build(image('synth', `oci-archive:${archive}`, { init: '/usr/bin/nope' }))).rejects.toThrow(
        /no init: \/usr\/bin\/nope does not exist/,
      );
      await expect(cache.build(image('synth', `oci-archive:${archive}`, { nics: ['igb', 'ixgbe'] }))).rejects.toThrow(
        /no NIC driver for kernel 6\.10\.0-test: looked for igb, ixgbe in \/usr\/lib\/modules\/6\.10\.0-test\/modules\.dep/,
      );
      await expectUntouched();
    });

    it('a missing archive and a platform the archive does not have', async () => {
      await expect(cache.build(image('synth', `oci-archive:${work}/nope.tar`))).rejects.toThrow(/does not exist/);
      await expect(cache.build(image('synth', `oci-archive:${archive}`, { platform: 'linux/riscv64' }))).rejects.toThrow(
        /no manifest for platform linux\/riscv64 \(has: linux\/arm64, linux\/amd64\)/,
      );
      await expectUntouched();
    });
  });
});
