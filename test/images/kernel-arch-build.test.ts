import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../server/config/types.ts';
import { ImageCache } from '../../server/images/cache.ts';
import { silentLogger } from '../../server/log.ts';

const run = promisify(execFile);

/** A `docker save` archive whose config says `architecture` and whose kernel is an arm64 Image. */
async function archive(work: string, architecture: string): Promise<string> {
  const root = join(work, 'root');
  const kernel = Buffer.alloc(8192);
  kernel.write('ARM\x64', 56, 'latin1');
  await mkdir(join(root, 'boot'), { recursive: true });
  await mkdir(join(root, 'sbin'), { recursive: true });
  await mkdir(join(root, 'usr/lib/modules/6.1.0-t'), { recursive: true });
  await writeFile(join(root, 'boot/vmlinuz-6.1.0-t'), kernel);
  await writeFile(join(root, 'boot/initrd.img-6.1.0-t'), 'its own initrd');
  await writeFile(join(root, 'sbin/init'), '#!/bin/sh\n', { mode: 0o755 });
  await writeFile(join(root, 'usr/lib/modules/6.1.0-t/modules.dep'), '');
  const out = join(work, architecture);
  await mkdir(out, { recursive: true });
  await run('tar', ['--numeric-owner', '--sort=name', '-C', root, '-cf', join(out, 'layer.tar'), '.']);
  const diffId = `sha256:${createHash('sha256').update(await readFile(join(out, 'layer.tar'))).digest('hex')}`;
  await writeFile(join(out, 'config.json'), JSON.stringify({ architecture, os: 'linux', rootfs: { type: 'layers', diff_ids: [diffId] } }));
  await writeFile(join(out, 'manifest.json'), JSON.stringify([{ Config: 'config.json', Layers: ['layer.tar'] }]));
  await run('tar', ['-C', out, '-cf', join(out, 'image.tar'), 'manifest.json', 'config.json', 'layer.tar']);
  return join(out, 'image.tar');
}

function image(name: string, path: string, platform: string): Image {
  return { name, source: `oci-archive:${path}`, cmdline: '', root: 'ram', initramfs: 'image', init: '/sbin/init', compression: 'gzip', platform };
}

describe('the image pipeline reads the kernel architecture', () => {
  let work: string;
  let cache: ImageCache;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'netboot-kernel-arch-'));
    cache = new ImageCache({ cacheDir: join(work, 'cache'), log: silentLogger });
  });
  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('writes it into the manifest beside the platform', async () => {
    const built = await cache.build(image('pi', await archive(work, 'arm64'), 'linux/arm64'));
    expect(built.manifest).toMatchObject({ platform: 'linux/arm64', architecture: 'arm64', kernelPath: '/boot/vmlinuz-6.1.0-t' });
  });

  it('fails the build of an image labelled amd64 whose kernel is arm64, naming both', async () => {
    await expect(cache.build(image('mislabelled', await archive(work, 'amd64'), 'linux/amd64'))).rejects.toThrow(
      /its kernel \/boot\/vmlinuz-6\.1\.0-t is built for arm64, but the image's platform is linux\/amd64/,
    );
    expect(await cache.currentId('mislabelled')).toBeNull();
  });
});
