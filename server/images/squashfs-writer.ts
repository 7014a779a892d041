import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { chown, open } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { ImageError } from './errors.ts';
import { atBulkPriority } from '../threads/priority.ts';
import { unprivileged } from './unprivileged.ts';

export { UNPRIVILEGED_ID } from './unprivileged.ts';
import { encodeHeader, END_OF_ARCHIVE, type TarEntry, type TarHeader } from './tar-reader.ts';

/**
 * Streams tar entries into `tar2sqfs` while `observe` may take a copy of any entry's data.
 * Every header tar2sqfs sees is written here from the parsed, checked header (never the
 * image's own header bytes), so tar2sqfs and our index agree on every name, size and link:
 * only owners, mode, mtime, link target, device numbers and the xattrs squashfs can hold are
 * passed on. tar2sqfs keeps those, hard links and device nodes; `--no-skip` makes any record
 * it cannot read a failure instead of a silently missing file. It runs as an unprivileged
 * user when we are root (it parses untrusted data), writing to a file we open for it.
 */


/**
 * Xattrs squashfs can store (user., trusted., security.: file capabilities, SELinux labels).
 * Others are left out: GNU tar --xattrs records POSIX ACLs as system.posix_acl_*, which squashfs
 * has no place for and tar2sqfs refuses with an error, failing the whole image.
 */
const SQUASHFS_XATTR = /^SCHILY\.xattr\.(user|trusted|security)\./;

/** The header tar2sqfs gets: rebuilt from what we decided, or a clear refusal. */
export function headerForSquashfs(header: TarHeader): Buffer {
  if (header.type === 'other') {
    throw new ImageError(`unsupported tar entry type ${JSON.stringify(header.typeflag)} (GNU sparse/multi-volume and the like are not image content)`);
  }
  if (Object.keys(header.pax).some((k) => k.startsWith('GNU.sparse.'))) throw new ImageError('PAX sparse files are not supported (repack the layer without --sparse)');
  const pax: Record<string, string> = {};
  for (const [key, value] of Object.entries(header.pax)) if (SQUASHFS_XATTR.test(key)) pax[key] = value;
  return encodeHeader({ ...header, size: header.type === 'file' ? header.size : 0, mtime: Math.max(0, header.mtime), pax });
}
export interface SquashfsWriteOptions {
  compressor: string;
  /** Sees every header; returns a sink for the entry's (unpadded) data to capture it. */
  observe?: (entry: TarEntry) => ((chunk: Buffer) => void) | null;
  onBytes?: (n: number) => void;
  signal?: AbortSignal;
}

export async function writeSquashfs(entries: AsyncIterable<TarEntry>, output: string, options: SquashfsWriteOptions): Promise<{ tarBytes: number }> {
  const jobs = Math.max(1, availableParallelism());
  const drop = unprivileged();
  // tar2sqfs reopens /dev/fd/3 (a magic link: no directory search needed), so the file must be the child's.
  const outFile = await open(output, 'w', 0o644);
  let child: ChildProcessByStdio<Writable, null, Readable>;
  try {
    if (drop.uid !== undefined) await outFile.chown(drop.uid, drop.gid!);
    child = atBulkPriority(() =>
      spawn('tar2sqfs', ['--quiet', '--no-skip', '--force', '-c', options.compressor, '-j', String(jobs), '/dev/fd/3'], {
        stdio: ['pipe', 'ignore', 'pipe', outFile.fd],
        ...drop,
      }),
    ) as unknown as ChildProcessByStdio<Writable, null, Readable>;
  } catch (err) {
    await outFile.close();
    throw err;
  }
  // Listeners first, then the await: a tar2sqfs that exits at once (a bad option) could
  // otherwise exit while we wait, and an 'exit' nobody heard leaves the build hanging.
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    // 'close' (stderr read to its end) gives the whole message; 'exit' alone must be enough too:
    // a pipe left open by anything the child left behind must not hang the build.
    child.once('exit', (code, signal) => {
      const status = code ?? (signal ? 128 : 1);
      const timer = setTimeout(() => resolve(status), 2000);
      child.once('close', () => {
        clearTimeout(timer);
        resolve(status);
      });
    });
  });
  let childGone = false;
  exited.then(() => (childGone = true), () => (childGone = true));
  const stdin = child.stdin;
  stdin.on('error', () => {
    /* EPIPE when tar2sqfs died: reported from its exit status below */
  });
  await outFile.close();
  let bytes = 0;
  let sinceYield = 0;
  const early = async () => {
    const code = await exited.catch(() => -1);
    return new ImageError(`tar2sqfs exited early (exit ${code}): ${stderr.trim() || 'no message'}`);
  };
  const write = async (buf: Buffer) => {
    if (childGone || stdin.destroyed || stdin.writableEnded) throw await early();
    bytes += buf.length;
    options.onBytes?.(bytes);
    if (!stdin.write(buf)) {
      sinceYield = 0;
      // Wait for room, or for the child to go: 'drain' never comes to a closed pipe, and a pipe
      // closed before we listened would leave this promise pending forever (the process then
      // exits 13 with nothing said).
      await new Promise<void>((resolve) => {
        const done = () => {
          stdin.off('drain', done);
          stdin.off('close', done);
          resolve();
        };
        stdin.on('drain', done);
        stdin.on('close', done);
        if (stdin.destroyed) done();
        void exited.then(done, done);
      });
      if (stdin.destroyed || childGone) throw await early();
    } else if ((sinceYield += buf.length) > 8 << 20) {
      // Let other work (progress, signals) run on long uncontended stretches.
      sinceYield = 0;
      await new Promise((r) => setImmediate(r));
    }
  };
  const onAbort = () => child.kill('SIGKILL');
  let current: string | undefined;
  options.signal?.addEventListener('abort', onAbort);
  try {
    for await (const entry of entries) {
      options.signal?.throwIfAborted();
      current = entry.header.path;
      const header = headerForSquashfs(entry.header);
      const sink = options.observe?.(entry) ?? null;
      await write(header);
      let left = entry.header.type === 'file' ? entry.header.size : 0;
      for await (const chunk of entry.body()) {
        if (sink && left > 0) {
          sink(chunk.length > left ? chunk.subarray(0, left) : chunk);
          left -= chunk.length;
        }
        await write(chunk);
      }
    }
    await write(END_OF_ARCHIVE);
    stdin.end();
    const code = await exited;
    if (code !== 0) throw new ImageError(`tar2sqfs failed (exit ${code}): ${stderr.trim() || 'no message'}`);
    if (drop.uid !== undefined) await chown(output, process.getuid!(), process.getgid!());
    return { tarBytes: bytes };
  } catch (err) {
    child.kill('SIGKILL');
    await exited.catch(() => {});
    // Name the entry being written: the admin needs to know where in the image it broke.
    if (current !== undefined && err instanceof Error && !err.message.includes('tar entry')) {
      throw new ImageError(`writing the squashfs at entry ${JSON.stringify(current)}: ${err.message}`, { cause: err });
    }
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}
