/**
 * The TFTP thread: a TftpServer on its own event loop (started by server/tftp/thread.ts). Files
 * are opened by the main thread, which owns the boot logic; this thread reads them by fd.
 */
import { read } from 'node:fs';
import { promisify } from 'node:util';
import { parentPort } from 'node:worker_threads';
import { pino } from 'pino';
import type { TftpFile, TftpFileSource } from './files.ts';
import { TftpServer } from './server.ts';
import type { FromThread, SharedFile, ToThread } from './thread-protocol.ts';

const readAsync = promisify(read);
const port = parentPort!;
const post = (message: FromThread) => port.postMessage(message);

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

port.on('message', (message: ToThread) => {
  switch (message.type) {
    case 'start': {
      const { logLevel, ...options } = message.options;
      const log = pino({ level: logLevel, base: undefined }, { write: (line: string) => post({ type: 'log', line }) });
      server = new TftpServer({ ...options, source, log, onTransfer: (event) => post({ type: 'transfer', event }) });
      server.start().then(
        ({ address, port: bound }) => post({ type: 'listening', address, port: bound }),
        (err: Error) => post({ type: 'start-failed', message: err.message }),
      );
      break;
    }
    case 'opened': {
      const waiter = opening.get(message.id);
      opening.delete(message.id);
      if (!waiter) break;
      if (message.error !== undefined) waiter.reject(new Error(message.error));
      else waiter.resolve(message.file === null ? null : sharedFile(message.id, message.file));
      break;
    }
    case 'stop':
      void (server?.stop() ?? Promise.resolve()).then(() => {
        post({ type: 'stopped' });
        port.close();
      });
      break;
  }
});
