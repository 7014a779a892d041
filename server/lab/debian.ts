import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cachedBuild, recipeKey } from './cached.ts';

const run = promisify(execFile);

/** The Debian mirror configured on this host (the only one reachable). */
export const DEBIAN_MIRROR = process.env.NETBOOT_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';

export interface DebianTreeOptions {
  /** Where the tarball is cached. */
  cacheDir: string;
  suite?: string;
  /** Extra packages (debootstrap --include), e.g. linux-image-amd64, systemd-sysv. */
  include?: string[];
}

/**
 * A debootstrap minbase of Debian as a tar file (numeric owners, xattrs kept), trimmed of
 * apt lists, docs and locales. Cached by recipe; the first build takes about a minute.
 * Returns the tar's path.
 */
export async function debianTarball(options: DebianTreeOptions): Promise<string> {
  const suite = options.suite ?? 'bookworm';
  const include = [...(options.include ?? [])].sort();
  const key = recipeKey('debian-minbase', 1, suite, include, DEBIAN_MIRROR);
  return cachedBuild(options.cacheDir, `debian-${suite}-${key}.tar`, async (out) => {
    const root = await mkdtemp(join(tmpdir(), 'netboot-debootstrap-'));
    try {
      const args = ['--variant=minbase'];
      if (include.length) args.push(`--include=${include.join(',')}`);
      await run('debootstrap', [...args, suite, root, DEBIAN_MIRROR], { maxBuffer: 64 << 20 });
      await run('sh', ['-c', 'rm -rf var/cache/apt/* var/lib/apt/lists/* usr/share/doc/* usr/share/man/* usr/share/locale/*', ''], {
        cwd: root,
      });
      await run('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-C', root, '-cf', out, '.'], { maxBuffer: 64 << 20 });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
}
