/**
 * Tools that parse untrusted image data (tar2sqfs, zstd, xz) run as nobody/nogroup when the
 * server runs as root: a bug in them then cannot touch the host. Node drops the supplementary
 * groups and every capability with the uid switch.
 */

/** The uid/gid image tools run as when the server runs as root (nobody/nogroup). */
export const UNPRIVILEGED_ID = 65534;

/** Spawn options that drop root for a child handling untrusted data (empty when we are not root). */
export function unprivileged(): { uid?: number; gid?: number } {
  return process.getuid?.() === 0 ? { uid: UNPRIVILEGED_ID, gid: UNPRIVILEGED_ID } : {};
}
