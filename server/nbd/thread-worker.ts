/**
 * The NBD thread: an NbdServer on its own event loop (started by server/nbd/thread.ts). Which
 * file an export name means is asked of the main thread; reads are reported in batches.
 */
import { postToMain, runServiceWorker } from '../threads/service-worker.ts';
import { NbdServer, type NbdExport, type NbdReadEvent } from './server.ts';
import type { FromThread, ThreadServerOptions, ToThread } from './thread-protocol.ts';

/** Reads are reported at most this often: one message per read would cost the main thread more than the read. */
const READ_BATCH_MS = 100;

const post = (message: FromThread) => postToMain(message);

const lookups = new Map<number, (found: NbdExport | null) => void>();
let nextId = 1;

function lookupExport(name: string): Promise<NbdExport | null> {
  return new Promise((resolve) => {
    const id = nextId++;
    lookups.set(id, resolve);
    post({ type: 'lookup', id, name });
  });
}

const bytesByExport = new Map<string, number>();
let latencies: number[] = [];
let flushTimer: NodeJS.Timeout | null = null;

function noteRead(event: NbdReadEvent): void {
  bytesByExport.set(event.export, (bytesByExport.get(event.export) ?? 0) + event.length);
  latencies.push(event.latencyMs);
  flushTimer ??= setTimeout(flushReads, READ_BATCH_MS);
}

function flushReads(): void {
  if (flushTimer) clearTimeout(flushTimer);
  flushTimer = null;
  if (latencies.length === 0) return;
  post({ type: 'reads', batch: { bytesByExport: [...bytesByExport], latenciesMs: Float64Array.from(latencies) } });
  bytesByExport.clear();
  latencies = [];
}

let server: NbdServer | undefined;

runServiceWorker<ThreadServerOptions, ToThread>({
  start({ host, port, ...options }, log) {
    server = new NbdServer({ ...options, log, lookupExport, onConnection: (event) => post({ type: 'connection', event }), onRead: noteRead });
    return server.start({ host, port });
  },
  async stop() {
    await server?.stop();
    flushReads();
  },
  onMessage(message) {
    if (message.type !== 'export') return;
    const resolve = lookups.get(message.id);
    lookups.delete(message.id);
    resolve?.(message.found);
  },
});
