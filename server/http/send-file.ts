import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { OpenFile } from '../fs/open-file-cache.ts';
import { startNativeSend } from './native-sendfile.ts';

/**
 * Sends bytes [start, end] of a file as the body of a response whose headers are set.
 *
 * On a plain TCP socket with the netboot_sendfile addon built, the bytes go out with
 * sendfile(2) on the addon's native threads (no copies through userspace, nothing on the JS
 * thread); the headers are written through Node first and must be in the kernel before the
 * first body byte. Otherwise (no addon, TLS, inject's fake socket, chunked encoding,
 * NETBOOT_SENDFILE=copy) it copies with two reused buffers: one is read from disk while the
 * other is being written to the socket, which keeps memory flat under many downloads.
 *
 * While a native job runs Node sees no socket activity: a socket idle timeout on the server
 * would fire mid-transfer (fastify's default connectionTimeout is 0, none).
 */
export const SEND_CHUNK = 256 * 1024;

export interface SendResult {
  /** Bytes handed to the socket. */
  bytes: number;
  /** Every byte of the range was handed to the socket (the client had not gone away). */
  complete: boolean;
}

/** Responses whose body went out by each path since start (the tests assert the native path is taken). */
export const sendFilePaths = { native: 0, copy: 0 };

/**
 * `done` runs once, before the response is ended (so that its effects are visible to whoever
 * waits for the response). `file` stays the caller's to release, after this resolves.
 */
export async function sendFileRange(
  res: ServerResponse,
  file: OpenFile,
  start: number,
  end: number,
  done: (result: SendResult) => void,
  chunk = SEND_CHUNK,
): Promise<void> {
  if (process.env.NETBOOT_SENDFILE !== 'copy' && tcpFd(res) !== null && (await sendNative(res, file, start, end, done))) return;
  sendFilePaths.copy++;
  await copyRange(res, file, start, end, done, chunk);
}

interface HandleInternals {
  _handle?: { fd?: number; constructor?: { name?: string } } | null;
  encrypted?: boolean;
}

/** The fd of a response's socket when it is a plain TCP socket and the body is not chunked (raw body bytes are then valid framing). */
function tcpFd(res: ServerResponse): number | null {
  const socket = res.socket as (Socket & HandleInternals) | null;
  if (!socket || socket.encrypted || res.chunkedEncoding || res.destroyed) return null;
  const handle = socket._handle;
  if (!handle || handle.constructor?.name !== 'TCP') return null;
  return typeof handle.fd === 'number' && handle.fd >= 0 ? handle.fd : null;
}

/** Resolves true once the status line and headers are all in the kernel (nothing left in Node's socket buffer). */
function headersOnTheWire(res: ServerResponse): Promise<boolean> {
  const socket = res.socket;
  if (!socket || res.destroyed) return Promise.resolve(false);
  return new Promise((resolve) => {
    let settled = false;
    const settle = (ok: boolean) => {
      if (settled) return;
      settled = true;
      res.off('close', onClose);
      socket.off('drain', check);
      resolve(ok && !res.destroyed);
    };
    const onClose = () => settle(false);
    const check = () => {
      if (socket.writableLength === 0) settle(true);
    };
    res.once('close', onClose);
    socket.on('drain', check);
    res.write('', (err) => (err ? settle(false) : check()));
  });
}

/** Returns false when it sent nothing and the copy loop should take over (headers may already be out: that is fine for it). */
async function sendNative(res: ServerResponse, file: OpenFile, start: number, end: number, done: (result: SendResult) => void): Promise<boolean> {
  if (!(await headersOnTheWire(res))) {
    sendFilePaths.native++;
    done({ bytes: 0, complete: false });
    res.destroy();
    return true;
  }
  // Writing the headers decided the framing (chunked if no Content-Length was set): look again.
  const fd = tcpFd(res);
  if (fd === null) return false;
  const length = end - start + 1;
  let job;
  try {
    job = startNativeSend(fd, file.fd, start, length);
  } catch {
    return false; // e.g. EMFILE on dup: copy instead
  }
  if (!job) return false;
  sendFilePaths.native++;
  const cancel = job.cancel;
  res.once('close', cancel);
  const { bytes, errno } = await job.result.finally(() => res.off('close', cancel));
  const complete = errno === 0 && bytes === length;
  done({ bytes, complete });
  // A short body must not be followed by another response on the same connection.
  if (complete && !res.destroyed) res.end();
  else res.destroy();
  return true;
}

async function copyRange(res: ServerResponse, file: OpenFile, start: number, end: number, done: (result: SendResult) => void, chunk: number): Promise<void> {
  let closed = res.destroyed;
  const onClose = () => {
    closed = true;
  };
  res.once('close', onClose);
  const gone = new Promise<void>((resolve) => res.once('close', () => resolve()));
  const buffers = [Buffer.allocUnsafeSlow(Math.min(chunk, end - start + 1)), Buffer.allocUnsafeSlow(Math.min(chunk, end - start + 1))];
  let position = start;
  let sent = 0;
  let which = 0;
  let previousWrite: Promise<void> = Promise.resolve();
  try {
    while (position <= end && !closed) {
      const buffer = buffers[which]!;
      const bytesRead = await file.read(buffer, 0, Math.min(buffer.length, end - position + 1), position);
      if (bytesRead === 0) break; // the file shrank under us: end short, the client sees a length mismatch
      // The other buffer's write must be done before we queue this one (and before that buffer is refilled next round).
      await Promise.race([previousWrite, gone]);
      if (closed) break;
      previousWrite = new Promise<void>((resolve) => {
        res.write(buffer.subarray(0, bytesRead), () => resolve());
      });
      position += bytesRead;
      sent += bytesRead;
      which ^= 1;
    }
    await Promise.race([previousWrite, gone]);
    done({ bytes: sent, complete: !closed && position > end });
    if (!closed) res.end();
  } catch (err) {
    done({ bytes: sent, complete: false });
    throw err;
  } finally {
    res.off('close', onClose);
  }
}
