/**
 * TFTP on its own thread. A lockstep transfer sends one block per round trip, so every block
 * waits for whatever the event loop is doing: in a boot storm the main thread answers DHCP,
 * scripts, artifacts and NBD for hundreds of machines, and TFTP shared its turns (bench/storm:
 * the TFTP phase took 2.6x the peer's). Here the request socket, the transfers and their
 * limits run in a worker (server/tftp/thread-worker.ts); the main thread keeps what needs the
 * boot logic: opening files (the thread reads them by fd, or gets their bytes), the
 * onTransfer callback and the log.
 */
import type { Worker } from 'node:worker_threads';
import { silentLogger } from '../log.ts';
import { ServiceThread } from '../threads/service-thread.ts';
import type { TftpFile } from './files.ts';
import type { TftpServerOptions } from './server.ts';
import type { FromThread, SharedFile, ThreadServerOptions, ToThread } from './thread-protocol.ts';

export class TftpThread extends ServiceThread<ThreadServerOptions, ToThread, FromThread> {
  readonly #options: TftpServerOptions;
  /** Files opened for the thread, held until it closes them (or exits). */
  readonly #files = new Map<number, TftpFile>();

  constructor(options: TftpServerOptions) {
    super(new URL('./thread-worker.mjs', import.meta.url), 'tftp', options.log ?? silentLogger);
    this.#options = options;
  }

  protected startOptions(): ThreadServerOptions {
    const { source: _source, onTransfer: _onTransfer, log: _log, ...plain } = this.#options;
    return plain;
  }

  protected onMessage(worker: Worker, message: FromThread): void {
    switch (message.type) {
      case 'open':
        void this.#open(worker, message.id, message.path, message.client);
        break;
      case 'close':
        this.#close(message.id);
        break;
      case 'transfer':
        this.callback('onTransfer', () => this.#options.onTransfer?.(message.event));
        break;
    }
  }

  protected onWorkerGone(): void {
    for (const id of [...this.#files.keys()]) this.#close(id);
  }

  async #open(worker: Worker, id: number, path: string, client: { address: string; port: number }): Promise<void> {
    let file: TftpFile | null;
    try {
      file = await this.#options.source(path, client);
    } catch (err) {
      this.post(worker, { type: 'opened', id, file: null, error: err instanceof Error ? err.message : String(err) });
      return;
    }
    if (file === null) return this.post(worker, { type: 'opened', id, file: null });
    if (this.worker !== worker) {
      await file.close().catch(() => undefined);
      return;
    }
    this.#files.set(id, file);
    let shared: SharedFile;
    try {
      const bytes = file.fd === undefined ? (file.bytes ?? (await file.read(0, file.size))) : undefined;
      shared = bytes === undefined ? { size: file.size, version: file.version, fd: file.fd! } : { size: file.size, version: file.version, bytes };
    } catch (err) {
      this.#close(id);
      this.post(worker, { type: 'opened', id, file: null, error: err instanceof Error ? err.message : String(err) });
      return;
    }
    this.post(worker, { type: 'opened', id, file: shared });
  }

  #close(id: number): void {
    const file = this.#files.get(id);
    this.#files.delete(id);
    void file?.close().catch(() => undefined);
  }
}
