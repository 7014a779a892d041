import type Dockerode from 'dockerode';
import type { Config, Image } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { ImageCache, type BuildProgress, type BuiltImage } from '../images/cache.ts';
import { findBusybox, initrdBuilderFingerprint, makeInitrd } from '../initramfs/index.ts';
import { nbdClientFiles, nbdClientFingerprint } from '../initramfs/nbd-client.ts';
import { verityHelperFiles, verityHelperFingerprint, verityHelperFor } from '../initramfs/verity-helper.ts';

export function openImageCache(config: Config, log: Logger): ImageCache {
  return new ImageCache({ cacheDir: config.server.cacheDir, log });
}

export interface BuildImageOptions {
  docker?: Dockerode;
  /** docker: pull when the image is missing from the engine (default true). */
  pull?: boolean;
  onProgress?: (progress: BuildProgress) => void;
  signal?: AbortSignal;
}

/** Per platform: the busybox (host's or foreign) is part of the fingerprint. */
const fingerprints = new Map<string, Promise<string>>();
let nbdFingerprint: Promise<string> | null = null;
let verityFingerprint: Promise<string> | null = null;

/**
 * Builds (or finds in the cache) one image's artifacts, our initramfs included. The initramfs
 * builder's fingerprint (/init, busybox, module lists) is part of the id, so editing
 * boot-assets/ gives every image a new id instead of a stale cached initrd.img.
 */
export async function buildImage(cache: ImageCache, image: Image, log: Logger, options: BuildImageOptions = {}): Promise<BuiltImage> {
  const ours = image.initramfs === 'netboot';
  let fingerprint = fingerprints.get(image.platform);
  if (ours && !fingerprint) {
    fingerprint = findBusybox(image.platform).then((busybox) => initrdBuilderFingerprint(busybox));
    fingerprint.catch(() => fingerprints.delete(image.platform));
    fingerprints.set(image.platform, fingerprint);
  }
  const nbd = ours && image.root === 'nbd';
  if (nbd) nbdFingerprint ??= nbdClientFingerprint();
  // Any machine of the image may have a disk cache (config per machine): every initramfs it can run gets the helper.
  const verity = ours && verityHelperFor(image.platform);
  if (verity) verityFingerprint ??= verityHelperFingerprint();
  return cache.build(image, {
    ...options,
    extraInputs: {
      initramfs: ours ? await fingerprint : null,
      root: image.root,
      ...(nbd ? { nbdClient: await nbdFingerprint } : {}),
      ...(verity ? { verityHelper: await verityFingerprint } : {}),
    },
    // An NBD root needs our NBD client (native/nbd-client) in the initramfs.
    makeInitrd: ours
      ? async (ctx) => makeInitrd({ ...ctx, extraFiles: [...(nbd ? await nbdClientFiles() : []), ...(verity ? await verityHelperFiles() : [])] })
      : undefined,
  });
}
