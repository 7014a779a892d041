import { closeSync, fstatSync, openSync, read, statSync, type Stats } from 'node:fs';
import { promisify } from 'node:util';
import { statKey } from './parsed-file-cache.ts';

const readAsync = promisify(read);

/** A read-only regular file held open by an OpenFileCache; give it back with `release()`. */
export interface OpenFile {
  readonly fd: number;
  /** The open file's stat (the one `fd` refers to). */
  readonly stat: Stats;
  /** Changes whenever the file at the path is replaced or rewritten (dev, inode, size, times). */
  readonly version: string;
  /** Reads until `length` bytes are in or the file ends; returns the bytes read. */
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Idempotent. The fd may stay open for the next caller: never close it yourself. */
  release(): void;
}

interface Entry {
  path: string;
  fd: number;
  stat: Stats;
  key: string;
  refs: number;
  /** Replaced by a newer version of the path: closed when its last user releases it. */
  retired: boolean;
  idleSince: number;
}

/**
 * Read-only files shared by every request that serves them (artifacts, iPXE binaries, NBD
 * exports): one open fd per file version instead of an open, fstat and close per request.
 * In a boot storm those three thread-pool trips per request were a tenth of the server's
 * main-thread time (bench/storm). Each acquire checks the path with a stat (microseconds for
 * a file just served) and opens synchronously only when the path holds a new version; a
 * replaced or deleted file is never served to a new request, while requests that hold the old
 * one finish with it. Unused fds are closed beyond `maxIdle` and after `idleMs` (so a deleted
 * image's space is freed).
 */
export class OpenFileCache {
  readonly #current = new Map<string, Entry>();
  readonly #idle = new Set<Entry>();
  readonly #open = new Set<Entry>();
  #sweeper: NodeJS.Timeout | null = null;

  constructor(
    private readonly maxIdle = 64,
    private readonly idleMs = 30_000,
  ) {}

  /** The regular file at `path`, or null when there is none (or it cannot be opened). */
  acquire(path: string): OpenFile | null {
    let info: Stats | undefined;
    try {
      info = statSync(path, { throwIfNoEntry: false });
    } catch {
      info = undefined;
    }
    const current = this.#current.get(path);
    if (!info?.isFile()) {
      if (current) this.#retire(current);
      return null;
    }
    if (current && current.key === statKey(info)) return this.#lend(current);
    if (current) this.#retire(current);
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch {
      return null;
    }
    let opened: Stats;
    try {
      opened = fstatSync(fd); // the path may have changed between stat and open: describe what was opened
    } catch {
      closeSync(fd);
      return null;
    }
    if (!opened.isFile()) {
      closeSync(fd);
      return null;
    }
    const entry: Entry = {
      path,
      fd,
      stat: opened,
      key: statKey(opened),
      refs: 0,
      retired: false,
      idleSince: 0,
    };
    this.#current.set(path, entry);
    this.#open.add(entry);
    return this.#lend(entry);
  }

  /** Files open now, in use or idle (tests). */
  get openCount(): number {
    return this.#open.size;
  }

  /** Closes every idle fd; files in use close when released. */
  closeIdle(): void {
    for (const entry of [...this.#idle]) this.#close(entry);
  }

  #lend(entry: Entry): OpenFile {
    entry.refs++;
    this.#idle.delete(entry);
    let released = false;
    return {
      fd: entry.fd,
      stat: entry.stat,
      version: entry.key,
      read: async (buffer, offset, length, position) => {
        if (released) throw new Error(`${entry.path}: read after release`);
        // The read holds the file too: a holder that releases while its read (or a prefetch) is in
        // flight must not let the fd close, and its number be reused, under that read.
        entry.refs++;
        try {
          return await readFully(entry.fd, buffer, offset, length, position);
        } finally {
          this.#giveBack(entry);
        }
      },
      release: () => {
        if (released) return;
        released = true;
        this.#giveBack(entry);
      },
    };
  }

  #giveBack(entry: Entry): void {
    if (--entry.refs > 0) return;
    if (entry.retired) {
      this.#close(entry);
      return;
    }
    entry.idleSince = Date.now();
    this.#idle.add(entry);
    while (this.#idle.size > this.maxIdle) this.#close(this.#idle.values().next().value!);
    this.#sweeper ??= setInterval(() => this.#sweep(), Math.max(1000, this.idleMs / 2)).unref();
  }

  #retire(entry: Entry): void {
    if (this.#current.get(entry.path) === entry) this.#current.delete(entry.path);
    if (entry.refs === 0) {
      this.#close(entry);
      return;
    }
    entry.retired = true;
  }

  #close(entry: Entry): void {
    this.#idle.delete(entry);
    this.#open.delete(entry);
    if (this.#current.get(entry.path) === entry) this.#current.delete(entry.path);
    closeSync(entry.fd);
    if (this.#idle.size === 0 && this.#sweeper) {
      clearInterval(this.#sweeper);
      this.#sweeper = null;
    }
  }

  #sweep(): void {
    const before = Date.now() - this.idleMs;
    for (const entry of [...this.#idle]) if (entry.idleSince <= before) this.#close(entry);
  }
}

async function readFully(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await readAsync(fd, buffer, offset + done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** The process's shared cache for files served read-only. */
export const servedFiles = new OpenFileCache();
