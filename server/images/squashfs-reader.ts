import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { atBulkPriority } from '../threads/priority.ts';

const run = promisify(execFile);

/**
 * Reads single files and listings out of a squashfs image with squashfs-tools-ng's
 * rdsquashfs: no mount, no root, no extraction of the whole tree.
 */

/** Contents of a regular file in the image; rejects when the path is missing or not a file. */
export async function readSquashfsFile(image: string, path: string): Promise<Buffer> {
  const { stdout } = await atBulkPriority(() => run('rdsquashfs', ['-c', path, image], { encoding: 'buffer', maxBuffer: 1 << 30 }));
  return stdout;
}

export interface SquashfsEntry {
  name: string;
  /** First char of `ls -l` mode: d, -, l, c, b, p, s */
  type: string;
  /** Link target for symlinks. */
  target?: string;
}

/** Entries of a directory in the image (not recursive). */
export async function listSquashfsDir(image: string, path: string): Promise<SquashfsEntry[]> {
  const { stdout } = await atBulkPriority(() => run('rdsquashfs', ['-l', path, image], { maxBuffer: 64 << 20 }));
  const entries: SquashfsEntry[] = [];
  for (const line of stdout.split('\n')) {
    // e.g. "drwxr-xr-x 0/0 1700000000 boot" or "lrwxrwxrwx 0/0 ... vmlinuz -> boot/vmlinuz-6.1.0-37-amd64"
    const match = /^([dlcbps-])[rwxsStT-]{9}\s+\S+\s+\S+\s+(.*)$/.exec(line);
    if (!match) continue;
    const [, type, rest] = match as unknown as [string, string, string];
    if (type === 'l') {
      const [name, target] = rest.split(' -> ') as [string, string | undefined];
      entries.push({ name, type, target });
    } else {
      entries.push({ name: rest, type });
    }
  }
  return entries;
}
