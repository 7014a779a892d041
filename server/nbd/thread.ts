/**
 * NBD on its own thread. In a boot storm every machine's root is hundreds of small reads, and
 * on the main thread they took turns from the requests that must stay quick (scripts, DHCP
 * answers, events): about 1 s of a 500-machine storm (bench/storm --root nbd, profiled). Here the listener, the sessions, the fair read queue and the reads run in a worker
 * (server/nbd/thread-worker.ts); the main thread keeps what needs the boot logic: which file
 * an export name means, connection events for the timeline, read metrics (in batches) and the log.
 */
import type { Worker } from 'node:worker_threads';
import { silentLogger } from '../log.ts';
import { ServiceThread } from '../threads/service-thread.ts';
import type { NbdConnectionEvent, NbdExport, NbdServerOptions } from './server.ts';
import type { FromThread, NbdReadBatch, ThreadServerOptions, ToThread } from './thread-protocol.ts';

export interface NbdThreadOptions extends ThreadServerOptions, Pick<NbdServerOptions, 'lookupExport' | 'log' | 'onConnection'> {
  /** Reads answered since the last batch (at most every 100 ms). */
  onReads?: (batch: NbdReadBatch) => void;
}

export type { NbdReadBatch };

export class NbdThread extends ServiceThread<ThreadServerOptions, ToThread, FromThread> {
  readonly #options: NbdThreadOptions;
  /** Export -> connections reading it, as the thread's connection events tell. */
  readonly #readers = new Map<string, number>();

  constructor(options: NbdThreadOptions) {
    super(new URL('./thread-worker.mjs', import.meta.url), 'nbd', options.log ?? silentLogger, 'bulk');
    this.#options = options;
  }

  /** Export name -> number of connections reading it now (e.g. so image GC can wait). */
  connectedExports(): Map<string, number> {
    return new Map(this.#readers);
  }

  protected startOptions(): ThreadServerOptions {
    const { lookupExport: _lookup, log: _log, onConnection: _onConnection, onReads: _onReads, ...plain } = this.#options;
    return plain;
  }

  protected onMessage(worker: Worker, message: FromThread): void {
    switch (message.type) {
      case 'lookup':
        void this.#lookup(worker, message.id, message.name);
        break;
      case 'connection':
        this.#count(message.event);
        this.callback('onConnection', () => this.#options.onConnection?.(message.event));
        break;
      case 'reads':
        this.callback('onReads', () => this.#options.onReads?.(message.batch));
        break;
    }
  }

  protected onWorkerGone(): void {
    this.#readers.clear();
  }

  async #lookup(worker: Worker, id: number, name: string): Promise<void> {
    let found: NbdExport | null = null;
    try {
      found = await this.#options.lookupExport(name);
    } catch (err) {
      this.log.error({ err, export: name }, 'nbd lookupExport threw');
    }
    if (this.worker === worker) this.post(worker, { type: 'export', id, found });
  }

  /** An export's reader count goes up at `open` and down at the `close` of a connection that had one. */
  #count(event: NbdConnectionEvent): void {
    if (event.export === null || event.event === 'refused') return;
    const now = (this.#readers.get(event.export) ?? 0) + (event.event === 'open' ? 1 : -1);
    if (now > 0) this.#readers.set(event.export, now);
    else this.#readers.delete(event.export);
  }
}
