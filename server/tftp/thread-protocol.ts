/** Messages between the TFTP thread (server/tftp/thread-worker.ts) and the main thread (server/tftp/thread.ts), beside the ones every service thread shares. */
import type { TftpClient } from './files.ts';
import type { TftpServerOptions, TransferEvent } from './server.ts';

/** The server's options that cross to the thread: all but the callbacks, which stay on the main thread. */
export type ThreadServerOptions = Omit<TftpServerOptions, 'source' | 'onTransfer' | 'log'>;

/** A file the main thread opened for the TFTP thread: its fd (held open until `close`), or its bytes. */
export type SharedFile = { size: number; version?: string } & ({ fd: number } | { bytes: Uint8Array });

export type ToThread = { type: 'opened'; id: number; file: SharedFile | null; error?: string };

export type FromThread =
  | { type: 'open'; id: number; path: string; client: TftpClient }
  | { type: 'close'; id: number }
  | { type: 'transfer'; event: TransferEvent };
