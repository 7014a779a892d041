import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { posix, join } from 'node:path';

/**
 * Reads a machine's folder (config/machines/<name>/) without ever following a symlink out of
 * it: symlinks are copied as symlinks, and one whose target would leave the folder (absolute,
 * or climbing above its root) is refused, because the same link is then read by the booted
 * machine relative to its own root. Sizes are bounded so that a stray big file cannot make
 * every layer request read gigabytes.
 */

export interface TreeFile {
  /** Relative path with '/' separators, e.g. "etc/motd.tmpl". */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  /** Permission bits on disk (files: used unless config overrides). */
  mode: number;
  content?: Buffer;
  target?: string;
}

export interface TreeLimits {
  maxFileBytes: number;
  maxTotalBytes: number;
  maxEntries: number;
}

export const DEFAULT_TREE_LIMITS: TreeLimits = { maxFileBytes: 16 << 20, maxTotalBytes: 64 << 20, maxEntries: 10_000 };

export class LayerSourceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LayerSourceError';
  }
}

export async function readMachineTree(root: string, limits: TreeLimits = DEFAULT_TREE_LIMITS): Promise<TreeFile[]> {
  const out: TreeFile[] = [];
  let total = 0;
  async function walk(relDir: string): Promise<void> {
    const names = (await readdir(join(root, relDir))).sort();
    for (const name of names) {
      const rel = relDir ? `${relDir}/${name}` : name;
      const abs = join(root, rel);
      const stat = await lstat(abs);
      if (out.length >= limits.maxEntries) throw new LayerSourceError(`${root}: more than ${limits.maxEntries} entries`);
      if (stat.isSymbolicLink()) {
        const target = await readlink(abs);
        const resolved = posix.normalize(posix.join(posix.dirname(rel), target));
        if (posix.isAbsolute(target) || resolved === '..' || resolved.startsWith('../')) {
          throw new LayerSourceError(
            `${abs}: symlink to "${target}" points outside the machine folder; use a relative target that stays inside it (e.g. ../usr/share/zoneinfo/UTC from etc/)`,
          );
        }
        out.push({ path: rel, type: 'symlink', mode: 0o777, target });
      } else if (stat.isDirectory()) {
        out.push({ path: rel, type: 'dir', mode: stat.mode & 0o7777 });
        await walk(rel);
      } else if (stat.isFile()) {
        if (stat.size > limits.maxFileBytes) throw new LayerSourceError(`${abs}: ${stat.size} bytes, over the ${limits.maxFileBytes}-byte limit for machine files`);
        total += stat.size;
        if (total > limits.maxTotalBytes) throw new LayerSourceError(`${root}: machine files exceed ${limits.maxTotalBytes} bytes in total`);
        out.push({ path: rel, type: 'file', mode: stat.mode & 0o7777, content: await readFile(abs) });
      } else {
        throw new LayerSourceError(`${abs}: not a regular file, directory or symlink (devices, fifos and sockets cannot be part of a layer)`);
      }
    }
  }
  await walk('');
  return out;
}
