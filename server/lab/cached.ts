import { createHash } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { acquireLockFile } from '../lock-file.ts';
import { join } from 'node:path';

/**
 * Things that take minutes to make (debootstrap trees, test fixtures) are cached on the
 * machine keyed by their recipe: a changed recipe makes a new one, an unchanged one is reused.
 */

export function recipeKey(...parts: unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16);
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/**
 * Returns `<dir>/<name>`, building it with `build(tmpPath)` first when missing.
 * The build writes to a temp path renamed into place, so an interrupted build leaves no
 * half fixture; a lock file serialises concurrent builders of the same fixture.
 */
export async function cachedBuild(dir: string, name: string, build: (tmpPath: string) => Promise<void>): Promise<string> {
  await mkdir(dir, { recursive: true });
  const target = join(dir, name);
  if (await exists(target)) return target;
  const lock = await acquireLockFile(`${target}.lock`);
  try {
    if (await exists(target)) return target;
    const tmp = `${target}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    try {
      await build(tmp);
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
    return target;
  } finally {
    await lock();
  }
}
