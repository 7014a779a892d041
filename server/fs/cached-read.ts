import { loadAddon } from '../native-addon.ts';

interface PreadBinding {
  readCached(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): number;
}

const { binding } = loadAddon<PreadBinding>('netboot_pread');

/** Whether page-cache reads are synchronous here (the netboot_pread addon loaded). */
export const cachedReadAvailable = binding !== null;

/**
 * Reads from `fd` into `buffer[offset..offset+length)` at `position` whatever the page cache
 * already holds, synchronously, stopping at the first byte that would have to come from the
 * disk (preadv2 RWF_NOWAIT, in native/pread/). Returns the bytes read: `length` for a cached
 * range, fewer (down to 0) when the rest must be read the usual way, through the thread pool,
 * which is also what happens without the addon. Throws on a read error.
 */
export function readCached(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): number {
  if (binding === null || length === 0) return 0;
  return Math.max(0, binding.readCached(fd, buffer, offset, length, position));
}
