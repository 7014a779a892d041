import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { unprivileged } from '../images/unprivileged.ts';
import { atBulkPriority } from '../threads/priority.ts';

const gunzipAsync = promisify(gunzip);

/**
 * The kernel module index of one kernel (modules.dep, modules.alias, modules.builtin as
 * depmod writes them), read through a caller-supplied file reader so it works on a
 * squashfs, a directory or a tar alike. Pure parsing; no I/O of its own.
 */

export type ModuleCompression = 'none' | 'xz' | 'zstd' | 'gzip';

export interface ModuleRef {
  /** Canonical module name: `-` folded to `_` (virtio_net, mlx5_core). */
  name: string;
  /** Path relative to the modules directory as depmod wrote it, e.g. kernel/fs/squashfs/squashfs.ko.xz */
  path: string;
  compression: ModuleCompression;
  /** The same path with the compression suffix dropped: the name it is shipped under. */
  shippedPath: string;
}

export interface ModuleAlias {
  pattern: string;
  module: string;
}

/** Directories tried, in order, for the modules of kernel `kver`. */
export function moduleDirCandidates(kver: string): string[] {
  return [`/usr/lib/modules/${kver}`, `/lib/modules/${kver}`];
}

export function canonicalModuleName(name: string): string {
  return name.replace(/-/g, '_');
}

const SUFFIXES: [string, ModuleCompression][] = [
  ['.ko.xz', 'xz'],
  ['.ko.zst', 'zstd'],
  ['.ko.gz', 'gzip'],
  ['.ko', 'none'],
];

export function moduleRefFromPath(path: string): ModuleRef | null {
  for (const [suffix, compression] of SUFFIXES) {
    if (!path.endsWith(suffix)) continue;
    const base = path.slice(path.lastIndexOf('/') + 1, -suffix.length);
    return { name: canonicalModuleName(base), path, compression, shippedPath: `${path.slice(0, -suffix.length)}.ko` };
  }
  return null;
}

export class ModuleIndex {
  /** Module name -> its file and its dependencies' names as modules.dep lists them. */
  private readonly modules = new Map<string, { ref: ModuleRef; deps: string[] }>();
  private readonly builtin = new Set<string>();
  readonly aliases: readonly ModuleAlias[];

  constructor(
    readonly kernelVersion: string,
    /** Absolute directory the index was read from, e.g. /usr/lib/modules/6.1.0-37-amd64 */
    readonly dir: string,
    files: { dep: string; alias?: string; builtin?: string },
  ) {
    for (const raw of files.dep.split('\n')) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const colon = line.indexOf(':');
      if (colon < 0) continue;
      const ref = moduleRefFromPath(line.slice(0, colon).trim());
      if (!ref) continue;
      const deps = line
        .slice(colon + 1)
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map((path) => moduleRefFromPath(path)?.name)
        .filter((name): name is string => name !== undefined);
      this.modules.set(ref.name, { ref, deps });
    }
    for (const raw of (files.builtin ?? '').split('\n')) {
      const ref = moduleRefFromPath(raw.trim());
      if (ref) this.builtin.add(ref.name);
    }
    const aliases: ModuleAlias[] = [];
    for (const raw of (files.alias ?? '').split('\n')) {
      const match = /^alias\s+(\S+)\s+(\S+)/.exec(raw);
      if (match) aliases.push({ pattern: match[1]!, module: canonicalModuleName(match[2]!) });
    }
    this.aliases = aliases;
  }

  /**
   * Reads the index of kernel `kver` from /usr/lib/modules/<kver>/ or else /lib/modules/<kver>/.
   * `readFile` rejects for a missing file (as fs.readFile and readSquashfsFile do).
   */
  static async load(readFile: (path: string) => Promise<Buffer>, kver: string): Promise<ModuleIndex> {
    const tried: string[] = [];
    for (const dir of moduleDirCandidates(kver)) {
      const dep = await readFile(`${dir}/modules.dep`).catch(() => null);
      tried.push(`${dir}/modules.dep`);
      if (!dep) continue;
      const optional = (name: string) => readFile(`${dir}/${name}`).then((b) => b.toString('utf8'), () => '');
      return new ModuleIndex(kver, dir, {
        dep: dep.toString('utf8'),
        alias: await optional('modules.alias'),
        builtin: await optional('modules.builtin'),
      });
    }
    throw new Error(`no modules.dep for kernel ${kver} (looked for ${tried.join(', ')}); was depmod run?`);
  }

  has(name: string): 'module' | 'builtin' | null {
    const canonical = canonicalModuleName(name);
    if (this.modules.has(canonical)) return 'module';
    if (this.builtin.has(canonical)) return 'builtin';
    return null;
  }

  get(name: string): ModuleRef | undefined {
    return this.modules.get(canonicalModuleName(name))?.ref;
  }

  /**
   * The module files needed to load `names`, dependencies first, each once. Built-in and
   * unknown names contribute nothing (check with `has()` when that matters).
   */
  closure(names: string[]): ModuleRef[] {
    const order: ModuleRef[] = [];
    const done = new Set<string>();
    const visiting = new Set<string>();
    const visit = (name: string) => {
      if (done.has(name) || visiting.has(name)) return;
      const entry = this.modules.get(name);
      if (!entry) return;
      visiting.add(name);
      // modules.dep lists the full dependency set in reverse load order (as modprobe reads it).
      for (const dep of [...entry.deps].reverse()) visit(dep);
      visiting.delete(name);
      done.add(name);
      order.push(entry.ref);
    };
    for (const name of names) visit(canonicalModuleName(name));
    return order;
  }

  /** modules.dep for just `refs`, with every path under its shipped (uncompressed) name. */
  trimmedDep(refs: readonly ModuleRef[]): string {
    const shipped = new Set(refs.map((ref) => ref.name));
    return refs
      .map((ref) => {
        const deps = (this.modules.get(ref.name)?.deps ?? []).filter((dep) => shipped.has(dep));
        const paths = deps.map((dep) => this.modules.get(dep)!.ref.shippedPath);
        return `${ref.shippedPath}:${paths.length ? ' ' + paths.join(' ') : ''}\n`;
      })
      .sort()
      .join('');
  }

  /** modules.alias lines whose module is among `refs`. */
  trimmedAlias(refs: readonly ModuleRef[]): string {
    const shipped = new Set(refs.map((ref) => ref.name));
    return this.aliases
      .filter((alias) => shipped.has(alias.module))
      .map((alias) => `alias ${alias.pattern} ${alias.module}\n`)
      .join('');
  }
}

/** No real module is near this (the largest, amdgpu, is ~20 MiB plain): more is a bomb or a wrong file. */
export const MAX_MODULE_BYTES = 64 << 20;

function tooLarge(what: string, limit: number): Error {
  return new Error(`${what}: decompresses to more than ${limit} bytes (limit ${limit >> 20} MiB): not a kernel module, or a decompression bomb`);
}

/** Runs a decompressor as a child process (off the event loop), killing it past `limit` bytes of output. */
function runWithInput(cmd: string, args: string[], input: Buffer, what: string, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = atBulkPriority(() =>
      execFile(cmd, args, { encoding: 'buffer', maxBuffer: limit, ...unprivileged() }, (err, stdout, stderr) => {
        if ((err as NodeJS.ErrnoException | null)?.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') reject(tooLarge(what, limit));
        else if (err) reject(new Error(`${what}: ${cmd} ${args.join(' ')} failed: ${stderr.toString().trim() || err.message}`));
        else resolve(stdout);
      }),
    );
    child.stdin?.on('error', () => {
      /* EPIPE when the child stopped reading (killed at the cap, or bad data): reported by the callback */
    });
    child.stdin?.end(input);
  });
}

/**
 * The plain ELF object of a possibly compressed module file (busybox insmod loads only plain .ko).
 * Output is capped at `limit` bytes; gzip runs in zlib's thread pool, xz and zstd in child processes.
 */
export async function decompressModule(data: Buffer, compression: ModuleCompression, what = 'module', limit = MAX_MODULE_BYTES): Promise<Buffer> {
  switch (compression) {
    case 'none':
      if (data.length > limit) throw tooLarge(what, limit);
      return data;
    case 'gzip':
      try {
        return await gunzipAsync(data, { maxOutputLength: limit });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) throw tooLarge(what, limit);
        throw new Error(`${what}: gzip: ${(err as Error).message}`);
      }
    case 'xz':
      return runWithInput('xz', ['-d', '-c', '-q'], data, what, limit);
    case 'zstd':
      return runWithInput('zstd', ['-d', '-c', '-q'], data, what, limit);
  }
}
