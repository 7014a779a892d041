import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type Dockerode from 'dockerode';
import type { Config, Image } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { ImageCache, type BuildProgress, type BuiltImage } from '../images/cache.ts';
import { BOOT_ASSETS_DIR, makeInitrd } from '../initramfs/index.ts';

/**
 * What the initramfs is made of besides the image: our /init and helpers. Part of every image
 * id, so editing boot-assets/ gives every image a new id (and a rebuilt initrd.img).
 */
export const INITRAMFS_INPUTS: string = (() => {
  const hash = createHash('sha256');
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else hash.update(entry.name).update(readFileSync(path));
    }
  };
  walk(BOOT_ASSETS_DIR);
  return hash.digest('hex').slice(0, 16);
})();

export function openImageCache(config: Config, log: Logger): ImageCache {
  return new ImageCache({ cacheDir: config.server.cacheDir, log });
}

export interface BuildImageOptions {
  docker?: Dockerode;
  onProgress?: (progress: BuildProgress) => void;
  signal?: AbortSignal;
}

/** Builds (or finds in the cache) one image's artifacts, our initramfs included. */
export function buildImage(cache: ImageCache, image: Image, log: Logger, options: BuildImageOptions = {}): Promise<BuiltImage> {
  return cache.build(image, {
    ...options,
    extraInputs: { initramfs: image.initramfs === 'netboot' ? INITRAMFS_INPUTS : null },
    makeInitrd:
      image.initramfs === 'netboot'
        ? async (ctx) => {
            await makeInitrd({ ...ctx, log: ctx.log });
          }
        : undefined,
  });
}
