import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
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
  /** Debian architecture (debootstrap --arch); default the host's. A foreign one (arm64 on amd64)
   * runs the second stage under qemu-user-static through binfmt_misc (ensureForeignArch). */
  arch?: string;
}

/**
 * A debootstrap minbase of Debian as a tar file (numeric owners, xattrs kept), trimmed of
 * apt lists, docs and locales. Cached by recipe; the first build takes about a minute.
 * Returns the tar's path.
 */
export async function debianTarball(options: DebianTreeOptions): Promise<string> {
  const suite = options.suite ?? 'bookworm';
  const include = [...(options.include ?? [])].sort();
  const arch = options.arch;
  // The host-arch key is unchanged from before --arch existed, so cached tarballs stay valid.
  const key = arch ? recipeKey('debian-minbase', 1, suite, include, DEBIAN_MIRROR, arch, 'no-initrd') : recipeKey('debian-minbase', 1, suite, include, DEBIAN_MIRROR);
  const name = arch ? `debian-${suite}-${arch}-${key}.tar` : `debian-${suite}-${key}.tar`;
  return cachedBuild(options.cacheDir, name, async (out) => {
    if (arch) await ensureForeignArch(arch);
    const root = await mkdtemp(join(tmpdir(), 'netboot-debootstrap-'));
    try {
      const args = ['--variant=minbase'];
      if (arch) args.push(`--arch=${arch}`);
      if (include.length) args.push(`--include=${include.join(',')}`);
      // A foreign tree gets no initrd of its own (INITRD=No: the kernel's postinst.d hook skips
      // update-initramfs): under qemu-user, mkinitramfs takes over half an hour, and a netboot
      // image boots with our initramfs anyway.
      const env = arch ? { ...process.env, INITRD: 'No' } : process.env;
      await run('debootstrap', [...args, suite, root, DEBIAN_MIRROR], { maxBuffer: 64 << 20, env });
      await run('sh', ['-c', 'rm -rf var/cache/apt/* var/lib/apt/lists/* usr/share/doc/* usr/share/man/* usr/share/locale/*', ''], {
        cwd: root,
      });
      await run('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-C', root, '-cf', out, '.'], { maxBuffer: 64 << 20 });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
}

const QEMU_USER: Record<string, string> = { arm64: 'aarch64', armhf: 'arm', riscv64: 'riscv64', amd64: 'x86_64' };
const HOST_DEBIAN_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64' };

/**
 * Makes binaries of a foreign Debian architecture runnable here (debootstrap's second stage
 * runs them in the chroot): binfmt_misc mounted, qemu-user-static's handler registered. Throws
 * with the fix when it cannot.
 */
export async function ensureForeignArch(arch: string): Promise<void> {
  if (HOST_DEBIAN_ARCH[process.arch] === arch) return;
  const qemu = QEMU_USER[arch];
  if (!qemu) throw new Error(`no qemu-user mapping for Debian architecture ${arch}`);
  const handler = `/proc/sys/fs/binfmt_misc/qemu-${qemu}`;
  const registered = async () => (await readFile(handler, 'utf8').catch(() => '')).startsWith('enabled');
  if (await registered()) return;
  if (!(await stat('/proc/sys/fs/binfmt_misc/register').then(() => true, () => false))) {
    await run('mount', ['-t', 'binfmt_misc', 'binfmt_misc', '/proc/sys/fs/binfmt_misc']).catch(() => undefined);
  }
  await run('update-binfmts', ['--enable', `qemu-${qemu}`]).catch(() => undefined);
  if (!(await registered())) {
    throw new Error(
      `cannot run ${arch} binaries on this host (no binfmt_misc handler qemu-${qemu}). Fix: apt-get install qemu-user-static binfmt-support (scripts/setup-host.sh), then mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc`,
    );
  }
}
