import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { ImageError } from './errors.ts';
import { END_OF_ARCHIVE, type TarEntry } from './tar-reader.ts';

/**
 * Streams tar entries into `tar2sqfs`, byte for byte, while `observe` may take a copy of any
 * entry's data. tar2sqfs keeps owners, modes, times, xattrs (PAX SCHILY.xattr.*), hard links
 * and device nodes; `--no-skip` makes any record it cannot read a failure instead of a
 * silently missing file.
 */
export interface SquashfsWriteOptions {
  compressor: string;
  /** Sees every header; returns a sink for the entry's (unpadded) data to capture it. */
  observe?: (entry: TarEntry) => ((chunk: Buffer) => void) | null;
  onBytes?: (n: number) => void;
  signal?: AbortSignal;
}

export async function writeSquashfs(entries: AsyncIterable<TarEntry>, output: string, options: SquashfsWriteOptions): Promise<{ tarBytes: number }> {
  const jobs = Math.max(1, availableParallelism());
  const child = spawn('tar2sqfs', ['--quiet', '--no-skip', '--force', '-c', options.compressor, '-j', String(jobs), output], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
  let childGone = false;
  exited.then(() => (childGone = true), () => (childGone = true));
  const stdin = child.stdin;
  stdin.on('error', () => {
    /* EPIPE when tar2sqfs died: reported from its exit status below */
  });
  let bytes = 0;
  let sinceYield = 0;
  const write = async (buf: Buffer) => {
    if (childGone) throw new ImageError(`tar2sqfs exited early: ${stderr.trim()}`);
    bytes += buf.length;
    options.onBytes?.(bytes);
    if (!stdin.write(buf)) {
      sinceYield = 0;
      await new Promise<void>((resolve) => {
        const done = () => {
          stdin.off('drain', done);
          stdin.off('close', done);
          resolve();
        };
        stdin.on('drain', done);
        stdin.on('close', done);
      });
    } else if ((sinceYield += buf.length) > 8 << 20) {
      // Let other work (progress, signals) run on long uncontended stretches.
      sinceYield = 0;
      await new Promise((r) => setImmediate(r));
    }
  };
  const onAbort = () => child.kill('SIGKILL');
  options.signal?.addEventListener('abort', onAbort);
  try {
    for await (const entry of entries) {
      options.signal?.throwIfAborted();
      const sink = options.observe?.(entry) ?? null;
      await write(entry.raw);
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
    if (code !== 0) throw new ImageError(`tar2sqfs failed (exit ${code}): ${stderr.trim()}`);
    return { tarBytes: bytes };
  } catch (err) {
    child.kill('SIGKILL');
    await exited.catch(() => {});
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}
