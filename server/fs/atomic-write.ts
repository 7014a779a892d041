import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { link, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/*
 * Durable writes. A rename is atomic but not durable: after a power cut the directory may still point at the old
 * file, or at a new file whose blocks never reached the disk (a zero-length or torn file). So: write a temp file in
 * the same directory, fsync it, rename it over the target, then fsync the directory that holds the new name.
 */

function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** fsync a directory so a rename or create inside it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function fsyncDirSync(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes and fsyncs a new temp file (it must not exist); the caller gives it its name. */
async function writeTempDurable(temp: string, data: string | Uint8Array, mode: number): Promise<void> {
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Replaces `path` with `data` so that a crash leaves either the old or the new content, never a mix or nothing. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const temp = tempPathFor(path);
  try {
    await writeTempDurable(temp, data, mode);
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await fsyncDir(dirname(path));
}

export function writeFileAtomicSync(path: string, data: string | Uint8Array, mode = 0o644): void {
  const temp = tempPathFor(path);
  const fd = openSync(temp, 'wx', mode);
  try {
    try {
      const bytes = typeof data === 'string' ? Buffer.from(data) : data;
      for (let off = 0; off < bytes.length; ) off += writeSync(fd, bytes, off, bytes.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, path);
  } catch (err) {
    rmSync(temp, { force: true });
    throw err;
  }
  fsyncDirSync(dirname(path));
}

/**
 * Creates `path` with `data` unless it exists (then returns false and leaves it alone). The name
 * appears only once the data is on disk (temp file, fsync, link, fsync dir): a crash leaves no
 * file or the whole file, never an empty one that later reads would take for the real thing.
 */
export async function createFileDurable(path: string, data: string | Uint8Array, mode = 0o644): Promise<boolean> {
  // Nothing to write when it exists (a read-only directory holding the file is fine).
  if (await stat(path).then(() => true, () => false)) return false;
  const temp = tempPathFor(path);
  try {
    await writeTempDurable(temp, data, mode);
    // link(2) never replaces an existing name, unlike rename(2): the first creator wins.
    await link(temp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await rm(temp, { force: true });
  }
  await fsyncDir(dirname(path));
  return true;
}

/**
 * An append-only file whose appends become durable in groups (group commit): `append` queues its bytes and
 * resolves once they are on disk. One write + fdatasync covers every append queued while the previous one ran,
 * and never more than one is in flight, so N concurrent appends cost about two fsyncs instead of N, and none of
 * them blocks the event loop (fs/promises runs them on the thread pool). A failed write or fsync rejects every
 * append of its group (their bytes may be partly written: readers skip a torn or unknown line); the next group
 * tries again from scratch. Appends past `maxQueuedBytes` (waiting for the next group) are refused at once with
 * an error, so whatever drives the appends cannot make the queue grow without bound while the disk is slow.
 */
export class GroupCommitLog {
  readonly #path: string;
  readonly #mode: number;
  readonly #maxQueuedBytes: number;
  #queue: { bytes: Buffer; settle: (err: Error | null) => void }[] = [];
  #queuedBytes = 0;
  #flushing = false;
  #fsyncs = 0;

  constructor(path: string, options: { mode?: number; maxQueuedBytes?: number } = {}) {
    this.#path = path;
    this.#mode = options.mode ?? 0o644;
    this.#maxQueuedBytes = options.maxQueuedBytes ?? 1 << 20;
  }

  /** fsyncs issued so far (one per group). */
  get fsyncs(): number {
    return this.#fsyncs;
  }

  /** Resolves once `text` is on disk (with everything appended before it); rejects with the write's error. */
  append(text: string): Promise<void> {
    const bytes = Buffer.from(text);
    if (this.#queuedBytes + bytes.length > this.#maxQueuedBytes) {
      return Promise.reject(new Error(`${this.#path}: more than ${this.#maxQueuedBytes} bytes wait for the disk, append refused`));
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ bytes, settle: (err) => (err ? reject(err) : resolve()) });
      this.#queuedBytes += bytes.length;
      if (this.#flushing) return;
      this.#flushing = true;
      // The first group also takes the appends of the requests handled in this turn of the event loop.
      setImmediate(() => void this.#flush());
    });
  }

  async #flush(): Promise<void> {
    while (this.#queue.length > 0) {
      const group = this.#queue;
      this.#queue = [];
      this.#queuedBytes = 0;
      let error: Error | null = null;
      try {
        await this.#writeDurably(Buffer.concat(group.map((entry) => entry.bytes)));
      } catch (err) {
        error = err as Error;
      }
      for (const entry of group) entry.settle(error);
    }
    this.#flushing = false;
  }

  async #writeDurably(bytes: Buffer): Promise<void> {
    const existed = await stat(this.#path).then(() => true, () => false);
    // Opened per group: a file replaced or a directory restored meanwhile is picked up by the next group.
    const handle = await open(this.#path, 'a', this.#mode);
    try {
      await handle.writeFile(bytes);
      this.#fsyncs++;
      // fdatasync: an append changes the size, which fdatasync flushes too (needed to read the data back).
      await handle.datasync();
    } finally {
      await handle.close();
    }
    if (!existed) await fsyncDir(dirname(this.#path));
  }
}

/**
 * Makes a finished directory tree durable before it is published with a rename: fsyncs every regular file and
 * directory in it (depth-first), so the rename can never expose a name whose data is still only in the page cache.
 */
export async function fsyncTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await fsyncTree(path);
    else if (entry.isFile()) {
      const handle = await open(path, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
  }
  await fsyncDir(dir);
}

/** rename(2) then fsync the parent directory of the destination (and of the source when it differs). */
export async function renameDurable(from: string, to: string): Promise<void> {
  await rename(from, to);
  await fsyncDir(dirname(to));
  if (dirname(from) !== dirname(to)) await fsyncDir(dirname(from));
}
