import { encodeHeader, END_OF_ARCHIVE, padded } from '../images/tar-reader.ts';

/**
 * Writes the per-machine top layer that /init unpacks with busybox tar: ustar headers (pax
 * records for long names) from the image pipeline's encoder, numeric owners only, fixed
 * mtimes, entries in the order given, so the same input gives the same bytes.
 */

export type TarEntry =
  | { type: 'file'; path: string; mode: number; uid: number; gid: number; content: Buffer }
  | { type: 'dir'; path: string; mode: number; uid: number; gid: number }
  | { type: 'symlink'; path: string; mode?: number; uid: number; gid: number; target: string };

/** 2020-01-01: a fixed mtime keeps the layer (and its ETag) a function of its content. */
export const LAYER_MTIME = 1577836800;

export function writeTar(entries: readonly TarEntry[], mtime = LAYER_MTIME): Buffer {
  const chunks: Buffer[] = [];
  for (const entry of entries) {
    const content = entry.type === 'file' ? entry.content : Buffer.alloc(0);
    chunks.push(
      encodeHeader({
        path: entry.path.replace(/\/+$/, ''),
        type: entry.type,
        mode: (entry.type === 'symlink' ? (entry.mode ?? 0o777) : entry.mode) & 0o7777,
        uid: entry.uid,
        gid: entry.gid,
        size: content.length,
        mtime,
        linkname: entry.type === 'symlink' ? entry.target : '',
        devmajor: 0,
        devminor: 0,
      }),
    );
    if (content.length) chunks.push(content, Buffer.alloc(padded(content.length) - content.length));
  }
  chunks.push(END_OF_ARCHIVE);
  return Buffer.concat(chunks);
}
