/**
 * The read-only virtual tree TFTP serves: sources (a directory, in-memory or generated content)
 * mounted under prefixes. No request path can leave its source: paths are normalised and
 * checked before any source sees them, and the directory source re-checks the real path so
 * a symlink cannot point out of its root.
 */
import { realpath, stat } from 'node:fs/promises';
import { servedFiles } from '../fs/open-file-cache.ts';
import { IPXE_BINARIES, IPXE_DIR, ipxeBinaryPath } from '../ipxe-binaries.ts';
import { join, sep } from 'node:path';

export interface TftpClient {
  address: string;
  port: number;
}

export interface TftpFile {
  size: number;
  /**
   * Names this content (a regular file: device, inode, size, mtime): transfers of the same
   * version share the chunks read from it (a storm sends one iPXE binary to every machine).
   */
  version?: string;
  /** Up to `length` bytes at `offset` (fewer only at the end of the file). */
  read(offset: number, length: number): Promise<Buffer>;
  /** The open file descriptor behind `read`, valid until `close()`: lets the transfer thread read it directly. */
  fd?: number;
  /** The whole content, when it is in memory. */
  bytes?: Buffer;
  close(): Promise<void>;
}

/** Resolves a normalised path (no leading '/', no '..') to a file, or null when there is none. */
export type TftpFileSource = (path: string, client: TftpClient) => Promise<TftpFile | null>;

export type NormalisedPath = { ok: true; path: string } | { ok: false; reason: string };

/**
 * Turns a requested file name into a safe relative path: leading '/' stripped (PXE clients
 * ask both `/ipxe.efi` and `ipxe.efi`), empty and '.' segments dropped; refused outright:
 * '..' segments, NUL and other control characters, and backslashes (we do not guess at
 * Windows-style names: a '\' might be a separator or part of a name).
 */
export function normaliseTftpPath(requested: string): NormalisedPath {
  if (/[\x00-\x1f\x7f]/.test(requested)) return { ok: false, reason: 'control character in path' };
  if (requested.includes('\\')) return { ok: false, reason: 'backslash in path' };
  const segments = requested.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.some((s) => s === '..')) return { ok: false, reason: "'..' in path" };
  if (segments.length === 0) return { ok: false, reason: 'empty path' };
  return { ok: true, path: segments.join('/') };
}

export function bufferFile(content: Buffer): TftpFile {
  return {
    size: content.length,
    bytes: content,
    async read(offset, length) {
      return content.subarray(offset, Math.min(content.length, offset + length));
    },
    async close() {},
  };
}

/**
 * Files under a directory. Symlinks inside the root are followed only while their target stays
 * inside the root (checked on the real path); only regular files are served.
 */
export function dirSource(root: string): TftpFileSource {
  let realRoot: Promise<string> | undefined;
  return async (path) => {
    const normalised = normaliseTftpPath(path);
    if (!normalised.ok) return null;
    realRoot ??= realpath(root);
    let rootReal: string;
    let target: string;
    try {
      rootReal = await realRoot;
      target = await realpath(join(rootReal, normalised.path));
    } catch {
      return null;
    }
    if (!target.startsWith(rootReal.endsWith(sep) ? rootReal : rootReal + sep)) return null;
    return openRegularFile(target);
  };
}

/** A regular file as a TftpFile (its fd, shared with other transfers of it, held for the transfer), or null. */
export async function openRegularFile(target: string): Promise<TftpFile | null> {
  const file = servedFiles.acquire(target);
  if (file === null) return null;
  const { size } = file.stat;
  return {
    size,
    version: file.version,
    fd: file.fd,
    async read(offset, length) {
      // Never more than what is left: a 256 KiB buffer for a 27 KiB tail is held as long as the chunk.
      const buffer = Buffer.allocUnsafe(Math.max(0, Math.min(length, size - offset)));
      return buffer.subarray(0, await file.read(buffer, 0, buffer.length, offset));
    },
    close: async () => file.release(),
  };
}

/** Fixed in-memory files, keyed by normalised path. */
export function memorySource(files: Record<string, Buffer>): TftpFileSource {
  const table = new Map(Object.entries(files));
  return async (path) => {
    const content = table.get(path);
    return content === undefined ? null : bufferFile(content);
  };
}

/** Content made per request (e.g. `machines/<mac>/boot.ipxe`); null = no such file. */
export function generatedSource(generate: (path: string, client: TftpClient) => Promise<Buffer | string | null>): TftpFileSource {
  return async (path, client) => {
    const content = await generate(path, client);
    if (content === null) return null;
    return bufferFile(typeof content === 'string' ? Buffer.from(content) : content);
  };
}

/**
 * Mounts sources under prefixes: `{ '': ipxe, 'images/': images, 'machines/': scripts }`.
 * The longest matching prefix wins and its source sees the path with the prefix removed.
 * A prefix should end in '/' (or be '' for the root).
 */
export function mountSources(mounts: Record<string, TftpFileSource>): TftpFileSource {
  const table = Object.entries(mounts).sort(([a], [b]) => b.length - a.length);
  return async (path, client) => {
    for (const [prefix, source] of table) {
      if (!path.startsWith(prefix)) continue;
      const rest = path.slice(prefix.length);
      if (rest === '') return null;
      return source(rest, client);
    }
    return null;
  };
}

/** True when `path` names a regular file (used by checks at setup, e.g. that the iPXE binaries exist). */
export async function isRegularFile(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isFile(), () => false);
}

/** Restricts a source to the listed names, e.g. only the iPXE binaries out of /usr/lib/ipxe. */
export function onlyFiles(source: TftpFileSource, names: readonly string[]): TftpFileSource {
  const allowed = new Set(names);
  return async (path, client) => (allowed.has(path) ? source(path, client) : null);
}

/** The iPXE binaries PXE firmware asks for, served from Debian's `ipxe` package directory. */
export { IPXE_BINARIES };

/** Only the iPXE binaries, from Debian's ipxe package (see server/ipxe-binaries.ts). */
export function ipxeSource(dir = IPXE_DIR): TftpFileSource {
  return async (path) => {
    const target = ipxeBinaryPath(path, dir);
    return target ? openRegularFile(target) : null;
  };
}
