import type { TarHeader } from './tar-reader.ts';

/**
 * Watches the flattened root tar go by and keeps what the boot needs: an index of every path
 * (type and link target only), and the contents of the few small files the kernel side needs
 * (kernels, kernel configs, modules.builtin, modules.dep, the image's own initramfs).
 * `analyse()` then picks the kernel and checks the image can boot.
 */

const MODULES_DIR = /^(?:usr\/)?lib\/modules\/([^/]+)\/(vmlinuz|modules\.builtin|modules\.dep|initramfs\.img|config)$/;
const BOOT_FILE = /^boot\/(vmlinuz|initrd\.img|config)-(.+)$/;
const BOOT_INITRAMFS = /^boot\/initramfs-(.+)\.img$/;
/** /vmlinuz itself, and any file directly in /boot (where a /vmlinuz symlink may point). */
const ROOT_KERNEL = /^(?:vmlinuz|boot\/[^/]+)$/;

/** Capture at most this much in total: a safety net against absurd images. */
const CAPTURE_LIMIT = 1 << 30;

export const DEFAULT_NIC_MODULES = [
  'virtio_net', 'e1000', 'e1000e', 'igb', 'igc', 'ixgbe', 'i40e', 'ice', 'r8169', 'tg3', 'bnx2', 'bnx2x',
  'bnxt_en', 'mlx4_en', 'mlx5_core', 'vmxnet3', 'atlantic', 'sfc', 'be2net', '8139cp', '8139too', 'pcnet32', 'ne2k_pci',
];

interface IndexEntry {
  type: TarHeader['type'];
  linkname?: string;
}

export interface KernelFiles {
  version: string;
  /** Every kernel version found, newest first. */
  versions: string[];
  kernel: Buffer;
  kernelPath: string;
  config?: Buffer;
  configPath?: string;
  modulesBuiltin?: Buffer;
  modulesDep?: Buffer;
  modulesDir?: string;
  imageInitrd?: Buffer;
  imageInitrdPath?: string;
}

export interface AnalyseOptions {
  /** Kernel version to use (config `kernel:`); default the newest. */
  kernel?: string;
  init: string;
  /** Whether our netboot initramfs will boot it (then squashfs/overlay/NIC modules are needed). */
  initramfs: 'netboot' | 'image';
  nics?: string[];
  /** Prefix for messages, e.g. `image lab (sha256:ab12...)`. */
  label: string;
}

export class ImageProblem extends Error {
  override name = 'ImageProblem';
}

export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    if (x === y) continue;
    const nx = Number(x);
    const ny = Number(y);
    if (i % 2 === 1 && x !== '' && y !== '') return nx - ny;
    return x < y ? -1 : 1;
  }
  return 0;
}

export class RootInspector {
  private readonly index = new Map<string, IndexEntry>();
  private readonly captured = new Map<string, Buffer[]>();
  private capturedBytes = 0;

  /** Records an entry; returns a sink for its data when the content is wanted. */
  observe(header: TarHeader): ((chunk: Buffer) => void) | null {
    const { path, type } = header;
    this.index.set(path, type === 'symlink' || type === 'link' ? { type, linkname: header.linkname } : { type });
    if (type !== 'file') return null;
    if (!(MODULES_DIR.test(path) || BOOT_FILE.test(path) || BOOT_INITRAMFS.test(path) || ROOT_KERNEL.test(path))) return null;
    const chunks: Buffer[] = [];
    this.captured.set(path, chunks);
    return (chunk) => {
      this.capturedBytes += chunk.length;
      if (this.capturedBytes > CAPTURE_LIMIT) throw new Error('kernel/initramfs files of the image exceed 1 GiB');
      chunks.push(Buffer.from(chunk));
    };
  }

  get pathCount(): number {
    return this.index.size;
  }

  /**
   * Follows symlinks (in every component, absolute and relative) and hard links inside the
   * image; returns the final path and its entry, or null when it does not exist.
   */
  resolve(path: string, hops = 0): { path: string; entry: IndexEntry } | null {
    if (hops > 40) return null;
    const parts = path.split('/').filter((p) => p && p !== '.');
    const done: string[] = [];
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      if (part === '..') {
        done.pop();
        continue;
      }
      done.push(part);
      const current = done.join('/');
      const entry = this.index.get(current);
      if (!entry) return null;
      if (entry.type === 'symlink') {
        const target = entry.linkname!;
        const base = target.startsWith('/') ? [] : done.slice(0, -1);
        const rest = parts.slice(i + 1);
        return this.resolve([...base, ...target.split('/'), ...rest].join('/'), hops + 1);
      }
      if (entry.type === 'link' && i === parts.length - 1) {
        return this.resolve(entry.linkname!, hops + 1);
      }
    }
    const final = done.join('/');
    const entry = final === '' ? { type: 'dir' as const } : this.index.get(final);
    return entry ? { path: final, entry } : null;
  }

  private content(path: string): { path: string; data: Buffer } | null {
    const resolved = this.resolve(path);
    if (!resolved) return null;
    const chunks = this.captured.get(resolved.path);
    return chunks ? { path: resolved.path, data: Buffer.concat(chunks) } : null;
  }

  private moduleFile(version: string, name: string): { path: string; data: Buffer } | null {
    return this.content(`usr/lib/modules/${version}/${name}`) ?? this.content(`lib/modules/${version}/${name}`);
  }

  /** Kernel versions with a kernel image, newest first. */
  kernelVersions(): string[] {
    const versions = new Set<string>();
    for (const path of this.captured.keys()) {
      const boot = BOOT_FILE.exec(path);
      if (boot && boot[1] === 'vmlinuz') versions.add(boot[2]!);
      const mod = MODULES_DIR.exec(path);
      if (mod && mod[2] === 'vmlinuz') versions.add(mod[1]!);
    }
    if (versions.size === 0) {
      // A bare /vmlinuz or /boot/vmlinuz: its version comes from the modules directory.
      const bare = this.content('vmlinuz') ?? this.content('boot/vmlinuz');
      if (bare) for (const v of this.moduleDirs()) versions.add(v);
    }
    return [...versions].sort((a, b) => compareVersions(b, a));
  }

  private moduleDirs(): string[] {
    const dirs = new Set<string>();
    for (const path of this.index.keys()) {
      const m = /^(?:usr\/)?lib\/modules\/([^/]+)$/.exec(path);
      if (m && this.index.get(path)!.type === 'dir') dirs.add(m[1]!);
    }
    return [...dirs];
  }

  /** Picks the kernel and checks bootability; throws ImageProblem naming what is missing. */
  analyse(options: AnalyseOptions): KernelFiles {
    const { label } = options;
    const versions = this.kernelVersions();
    if (versions.length === 0) {
      throw new ImageProblem(
        `${label}: no kernel: looked in /boot/vmlinuz-*, /vmlinuz, /usr/lib/modules/*/vmlinuz — install a kernel package in the image (Debian: linux-image-amd64)`,
      );
    }
    const version = options.kernel ?? versions[0]!;
    if (!versions.includes(version)) {
      throw new ImageProblem(`${label}: kernel ${version} (from config) is not in the image; it has: ${versions.join(', ')}`);
    }
    const kernel =
      this.content(`boot/vmlinuz-${version}`) ??
      this.moduleFile(version, 'vmlinuz') ??
      this.content('vmlinuz') ??
      this.content('boot/vmlinuz');
    if (!kernel) throw new ImageProblem(`${label}: kernel ${version}: its image file could not be read`);
    const config = this.content(`boot/config-${version}`) ?? this.moduleFile(version, 'config');
    const builtin = this.moduleFile(version, 'modules.builtin');
    const dep = this.moduleFile(version, 'modules.dep');
    const initrd =
      this.content(`boot/initrd.img-${version}`) ?? this.content(`boot/initramfs-${version}.img`) ?? this.moduleFile(version, 'initramfs.img');
    const problems: string[] = [];

    const init = this.resolve(options.init);
    if (!init || init.entry.type !== 'file') {
      problems.push(
        `no init: ${options.init} ${init ? `resolves to /${init.path}, which is not a file` : 'does not exist (symlinks followed)'} — install an init (Debian: systemd-sysv) or set the image's init: in config`,
      );
    }
    const modulesDir = dep ? `/${dep.path.slice(0, dep.path.lastIndexOf('/'))}` : `/usr/lib/modules/${version}`;
    if (options.initramfs === 'netboot') {
      const available = moduleNames(dep?.data, builtin?.data);
      const where = `${modulesDir}/modules.dep and modules.builtin`;
      for (const needed of ['squashfs', 'overlay']) {
        if (!available.has(needed)) {
          problems.push(`no ${needed} support in kernel ${version}: not found in ${where} — use a kernel with ${needed} (module or built in)`);
        }
      }
      const nics = options.nics ?? DEFAULT_NIC_MODULES;
      if (!nics.some((n) => available.has(n.replace(/-/g, '_')))) {
        problems.push(
          `no NIC driver for kernel ${version}: looked for ${nics.join(', ')} in ${where} — install the kernel's modules (Debian: linux-image-amd64) or list the NIC driver in the image's nics:`,
        );
      }
    } else if (!initrd) {
      problems.push(
        `initramfs: image, but the image ships no initramfs for ${version}: looked in /boot/initrd.img-${version}, /boot/initramfs-${version}.img, /usr/lib/modules/${version}/initramfs.img`,
      );
    }
    if (problems.length) throw new ImageProblem(`${label}: ${problems.join('; ')}`);

    return {
      version,
      versions,
      kernel: kernel.data,
      kernelPath: `/${kernel.path}`,
      config: config?.data,
      configPath: config ? `/${config.path}` : undefined,
      modulesBuiltin: builtin?.data,
      modulesDep: dep?.data,
      modulesDir,
      imageInitrd: initrd?.data,
      imageInitrdPath: initrd ? `/${initrd.path}` : undefined,
    };
  }
}

/** Module names (underscored, no extension) from modules.dep keys and modules.builtin lines. */
export function moduleNames(dep: Buffer | undefined, builtin: Buffer | undefined): Set<string> {
  const names = new Set<string>();
  const add = (path: string) => {
    const base = path.slice(path.lastIndexOf('/') + 1).replace(/\.ko(\.(xz|zst|gz))?$/, '');
    if (base) names.add(base.replace(/-/g, '_'));
  };
  for (const line of (dep?.toString('utf8') ?? '').split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) add(line.slice(0, colon));
  }
  for (const line of (builtin?.toString('utf8') ?? '').split('\n')) if (line.trim()) add(line.trim());
  return names;
}
