import { existsSync, readFileSync } from 'node:fs';
import { copyFile, link, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_DIR } from '../../test/fixtures/cache.ts';

/**
 * The image bench/storm boots: the e2e suite's busybox image (kernel, netboot initramfs with
 * the NBD client, 60 MiB squashfs), as its cache already holds it. The bench never builds:
 * it gives `netboot serve` a private cache dir holding this id (hard links) and a pointer
 * file naming it current, and a docker source that cannot be reached, so the server serves
 * "the last good build" and nothing else runs beside the storm.
 */
export const E2E_CACHE = join(FIXTURE_DIR, 'e2e-cache');
const STORM_IMAGE_POINTER = join(E2E_CACHE, 'images', 'busybox-nbd.current');

/**
 * The id of the e2e suite's busybox image with root: nbd in this machine's fixture cache (its
 * pointer file): each machine builds its own, and the id changes with Debian's packages.
 */
export function stormImageId(): string {
  const hint = 'run the e2e suite (or bench/nbd.ts --only boot --boot-images busybox) once to build it';
  if (!existsSync(STORM_IMAGE_POINTER)) throw new Error(`${STORM_IMAGE_POINTER} is missing: the e2e busybox image is not in the fixture cache; ${hint}`);
  const { id } = JSON.parse(readFileSync(STORM_IMAGE_POINTER, 'utf8')) as { id: string };
  if (!existsSync(join(E2E_CACHE, 'images', id, 'manifest.json'))) throw new Error(`${STORM_IMAGE_POINTER} names ${id}, which is not in the fixture cache; ${hint}`);
  return id;
}

export async function prepareStormCache(cacheDir: string, imageNames: string[], id: string): Promise<string> {
  const from = join(E2E_CACHE, 'images', id);
  const to = join(cacheDir, 'images', id);
  await mkdir(to, { recursive: true });
  for (const name of await readdir(from)) {
    await link(join(from, name), join(to, name)).catch(() => copyFile(join(from, name), join(to, name)));
  }
  for (const name of imageNames) {
    await writeFile(join(cacheDir, 'images', `${name}.current`), JSON.stringify({ id, digest: 'storm-bench', at: new Date().toISOString() }) + '\n');
  }
  return to;
}

/** An engine address nothing listens on: the server's build attempt fails at once and it serves the pointer's id. */
export const NO_DOCKER_ENV = { DOCKER_HOST: 'unix:///nonexistent/storm-no-docker.sock' };
