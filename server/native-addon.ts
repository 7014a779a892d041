import { createRequire } from 'node:module';

/**
 * Loads one of netboot's native addons (native/, built into build/Release by `npm ci` through
 * binding.gyp). Each is optional: without a compiler, or off Linux, callers take their
 * portable path, so a load failure is returned, never thrown.
 */
export function loadAddon<T>(name: string): { binding: T; error: null } | { binding: null; error: Error } {
  if (process.platform !== 'linux') return { binding: null, error: new Error(`${name} is a Linux-only addon`) };
  try {
    return { binding: createRequire(import.meta.url)(`../build/Release/${name}.node`) as T, error: null };
  } catch (err) {
    return { binding: null, error: err as Error };
  }
}
