/**
 * TFTP on its own thread. A lockstep transfer sends one block per round trip, so every block
 * waits for whatever the event loop is doing: in a boot storm the main thread answers DHCP,
 * scripts, artifacts and NBD for hundreds of machines, and TFTP shared its turns (bench/storm:
 * the TFTP phase took 2.6x the peer's). Here the request socket, the transfers and their
 * limits run in a worker (server/tftp/thread-worker.ts); the main thread keeps what needs the
 * boot logic: opening files (the thread reads them by fd, or gets their bytes), the
 * onTransfer callback and the log.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from '../log.ts';
import { silentLogger } from '../log.ts';
import type { TftpFile } from './files.ts';
import type { TftpServerOptions } from './server.ts';
import type { FromThread, SharedFile, ToThread } from './thread-protocol.ts';

const WORKER_ENTRY = new URL('./thread-worker.mjs', import.meta.url);
/** A thread that dies is restarted; one that keeps dying (a bug, not a client) is given up on. */
const MAX_RESTARTS = 5;

type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

export class TftpThread {
  readonly #options: TftpServerOptions;
  readonly #log: Logger;
  #worker: Worker | null = null;
  /** Files opened for the thread, held until it closes them (or exits). */
  readonly #files = new Map<number, TftpFile>();
  #stopping = false;
  #restarts = 0;

  constructor(options: TftpServerOptions) {
    this.#options = options;
    this.#log = options.log ?? silentLogger;
  }

  /** Starts the thread and binds the request socket; resolves with the bound address. */
  async start(): Promise<{ address: string; port: number }> {
    if (this.#worker) throw new Error('tftp thread already started');
    this.#stopping = false;
    const worker = new Worker(WORKER_ENTRY);
    this.#worker = worker;
    const listening = new Promise<{ address: string; port: number }>((resolve, reject) => {
      worker.on('message', (message: FromThread) => {
        if (message.type === 'listening') resolve({ address: message.address, port: message.port });
        else if (message.type === 'start-failed') reject(new Error(message.message));
        else this.#onMessage(worker, message);
      });
      worker.on('error', (err) => {
        reject(err);
        this.#log.error({ err }, 'tftp thread failed');
      });
      worker.once('exit', (code) => {
        reject(new Error(`tftp thread exited (code ${code}) before listening`));
        this.#onExit(worker, code);
      });
    });
    const { source: _source, onTransfer: _onTransfer, log: _log, ...plain } = this.#options;
    this.#post(worker, { type: 'start', options: { ...plain, logLevel: this.#log.level } });
    try {
      return await listening;
    } catch (err) {
      this.#worker = null;
      await worker.terminate();
      throw err;
    }
  }

  /** Ends every transfer (clients get ERROR 0), closes the sockets and the thread. */
  async stop(): Promise<void> {
    const worker = this.#worker;
    if (!worker) return;
    this.#stopping = true;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    this.#post(worker, { type: 'stop' });
    await exited;
  }

  #post(worker: Worker, message: ToThread): void {
    worker.postMessage(message);
  }

  #onMessage(worker: Worker, message: FromThread): void {
    switch (message.type) {
      case 'open':
        void this.#open(worker, message.id, message.path, message.client);
        break;
      case 'close':
        this.#close(message.id);
        break;
      case 'transfer':
        try {
          this.#options.onTransfer?.(message.event);
        } catch (err) {
          this.#log.error({ err }, 'tftp onTransfer callback threw');
        }
        break;
      case 'log':
        this.#relay(message.line);
        break;
      case 'stopped':
        void worker.terminate();
        break;
    }
  }

  async #open(worker: Worker, id: number, path: string, client: { address: string; port: number }): Promise<void> {
    let file: TftpFile | null;
    try {
      file = await this.#options.source(path, client);
    } catch (err) {
      this.#post(worker, { type: 'opened', id, file: null, error: err instanceof Error ? err.message : String(err) });
      return;
    }
    if (file === null) return this.#post(worker, { type: 'opened', id, file: null });
    if (this.#worker !== worker) {
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
      this.#post(worker, { type: 'opened', id, file: null, error: err instanceof Error ? err.message : String(err) });
      return;
    }
    this.#post(worker, { type: 'opened', id, file: shared });
  }

  #close(id: number): void {
    const file = this.#files.get(id);
    this.#files.delete(id);
    void file?.close().catch(() => undefined);
  }

  /** A line the thread's logger wrote, logged again here (with this logger's bindings and destination). */
  #relay(line: string): void {
    let record: { level?: number; time?: unknown; msg?: string; [field: string]: unknown };
    try {
      record = JSON.parse(line) as typeof record;
    } catch {
      return;
    }
    const { level, time: _time, msg, ...fields } = record;
    const label = (this.#log.levels.labels[level ?? 30] ?? 'info') as LogLevel;
    this.#log[label](fields, msg ?? '');
  }

  #onExit(worker: Worker, code: number): void {
    if (this.#worker !== worker) return;
    this.#worker = null;
    for (const id of [...this.#files.keys()]) this.#close(id);
    if (this.#stopping) return;
    if (this.#restarts >= MAX_RESTARTS) {
      this.#log.fatal({ code, restarts: this.#restarts }, 'tftp thread exited again: TFTP is down');
      return;
    }
    this.#restarts++;
    this.#log.error({ code, restarts: this.#restarts }, 'tftp thread exited: restarting it');
    this.start().catch((err: unknown) => this.#log.fatal({ err }, 'tftp thread restart failed: TFTP is down'));
  }
}
