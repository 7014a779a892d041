/**
 * The TFTP thread: a TftpServer on its own event loop (started by server/tftp/thread.ts). Files
 * are opened by the main thread, which owns the boot logic; this thread reads them by fd.
 */
import { read } from 'node:fs';
import { promisify } from 'node:util';
import { postToMain, runServiceWorker } from '../threads/service-worker.ts';
import type { TftpFile, TftpFileSource } from './files.ts';
import { TftpServer } from './server.ts';
import type { FromThread, SharedFile, ThreadServerOptions, ToThread } from './thread-protocol.ts';

const readAsync = promisify(read);
const post = (message: FromThread) => postToMain(message);

const opening = new Map<number, { resolve: (file: TftpFile | null) => void; reject: (err: Error) => void }>();
let nextId = 1;

const source: TftpFileSource = (path, client) =>
  new Promise((resolve, reject) => {
    const id = nextId++;
    opening.set(id, { resolve, reject });
    post({ type: 'open', id, path, client });
  });

function sharedFile(id: number, shared: SharedFile): TftpFile {
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    post({ type: 'close', id });
  };
  const { size, version } = shared;
  if ('bytes' in shared) {
    const bytes = Buffer.from(shared.bytes.buffer, shared.bytes.byteOffset, shared.bytes.byteLength);
    return { size, version, bytes, close, read: async (offset, length) => bytes.subarray(offset, Math.min(size, offset + length)) };
  }
  const { fd } = shared;
  return {
    size,
    version,
    close,
    async read(offset, length) {
      const buffer = Buffer.allocUnsafe(Math.max(0, Math.min(length, size - offset)));
      let filled = 0;
      while (filled < buffer.length) {
        const { bytesRead } = await readAsync(fd, buffer, filled, buffer.length - filled, offset + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      return buffer.subarray(0, filled);
    },
  };
}

let server: TftpServer | undefined;

runServiceWorker<ThreadServerOptions, ToThread>({
  start(options, log) {
    server = new TftpServer({ ...options, source, log, onTransfer: (event) => post({ type: 'transfer', event }) });
    return server.start();
  },
  stop: () => server?.stop() ?? Promise.resolve(),
  onMessage(message) {
    if (message.type !== 'opened') return;
    const waiter = opening.get(message.id);
    opening.delete(message.id);
    if (!waiter) return;
    if (message.error !== undefined) waiter.reject(new Error(message.error));
    else waiter.resolve(message.file === null ? null : sharedFile(message.id, message.file));
  },
});
