/** Messages between the NBD thread (server/nbd/thread-worker.ts) and the main thread (server/nbd/thread.ts), beside the ones every service thread shares. */
import type { NbdConnectionEvent, NbdExport, NbdServerOptions } from './server.ts';

/** The server's options that cross to the thread: the limits and where to listen; the callbacks stay on the main thread. */
export type ThreadServerOptions = Omit<NbdServerOptions, 'lookupExport' | 'listExports' | 'onConnection' | 'onRead' | 'onThrottle' | 'log'> & {
  host: string;
  port: number;
};

/** Reads answered since the last batch: payload bytes per export, and each read's latency. */
export interface NbdReadBatch {
  bytesByExport: [string, number][];
  latenciesMs: Float64Array;
}

export type ToThread = { type: 'export'; id: number; found: NbdExport | null };

export type FromThread =
  | { type: 'lookup'; id: number; name: string }
  | { type: 'connection'; event: NbdConnectionEvent }
  | { type: 'reads'; batch: NbdReadBatch };
