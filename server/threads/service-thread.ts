/**
 * A network service on its own thread (TFTP, NBD): the worker owns the sockets and the protocol
 * work, the main thread keeps what needs the boot logic (which file a name means, the timeline,
 * metrics) and the log. This class is the main thread's side of what every such service shares:
 * starting the worker until it listens, stopping it, relaying its log lines, and restarting a
 * thread that died. The worker's side is server/threads/service-worker.ts.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from '../log.ts';
import { atBulkPriority } from './priority.ts';
import type { FromServiceWorker, ToServiceWorker } from './protocol.ts';

/** A thread that dies is restarted; one that keeps dying (a bug, not a client) is given up on. */
const MAX_RESTARTS = 5;

type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

export abstract class ServiceThread<StartOptions, To extends { type: string }, From extends { type: string }> {
  #worker: Worker | null = null;
  #address: { address: string; port: number } | null = null;
  #stopping = false;
  #restarts = 0;

  /**
   * @param entry the worker's .mjs entry point
   * @param name the service, as the log names it ("tftp thread exited ...")
   * @param priority bulk: the thread runs below the control plane (server/threads/priority.ts)
   */
  constructor(
    private readonly entry: URL,
    private readonly name: string,
    protected readonly log: Logger,
    private readonly priority: 'control' | 'bulk' = 'control',
  ) {}

  /** What the worker's `start` message carries (plain data: no callbacks). */
  protected abstract startOptions(): StartOptions;
  /** A message of the service's own protocol. */
  protected abstract onMessage(worker: Worker, message: From): void;
  /** The worker is gone (stopped or died): release what was held for it. */
  protected abstract onWorkerGone(): void;

  /** Starts the thread and binds its socket; resolves with the bound address. */
  async start(): Promise<{ address: string; port: number }> {
    if (this.#worker) throw new Error(`${this.name} thread already started`);
    this.#stopping = false;
    const worker = this.priority === 'bulk' ? atBulkPriority(() => new Worker(this.entry)) : new Worker(this.entry);
    this.#worker = worker;
    const listening = new Promise<{ address: string; port: number }>((resolve, reject) => {
      worker.on('message', (message: From | FromServiceWorker) => {
        switch (message.type) {
          case 'listening': {
            const { address, port } = message as Extract<FromServiceWorker, { type: 'listening' }>;
            return resolve({ address, port });
          }
          case 'start-failed':
            return reject(new Error((message as Extract<FromServiceWorker, { type: 'start-failed' }>).message));
          case 'log':
            return this.#relay((message as Extract<FromServiceWorker, { type: 'log' }>).line);
          case 'stopped':
            return void worker.terminate();
          default:
            return this.onMessage(worker, message as From);
        }
      });
      worker.on('error', (err) => {
        reject(err);
        this.log.error({ err }, `${this.name} thread failed`);
      });
      worker.once('exit', (code) => {
        reject(new Error(`${this.name} thread exited (code ${code}) before listening`));
        this.#onExit(worker, code);
      });
    });
    this.post(worker, { type: 'start', options: { ...this.startOptions(), logLevel: this.log.level } });
    try {
      this.#address = await listening;
      return this.#address;
    } catch (err) {
      this.#worker = null;
      await worker.terminate();
      throw err;
    }
  }

  /** Asks the thread to stop its service (closing its clients) and waits for it to exit. */
  async stop(): Promise<void> {
    const worker = this.#worker;
    if (!worker) return;
    this.#stopping = true;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    this.post(worker, { type: 'stop' });
    await exited;
  }

  /** Where the thread listens (after a restart on port 0: the new port); null before the first start. */
  get address(): { address: string; port: number } | null {
    return this.#address;
  }

  /** The running worker (null between a death and its restart). */
  protected get worker(): Worker | null {
    return this.#worker;
  }

  /** Calls the owner's callback `name`; one that throws is logged, never thrown into the message loop. */
  protected callback(name: string, call: () => void): void {
    try {
      call();
    } catch (err) {
      this.log.error({ err }, `${this.name} ${name} callback threw`);
    }
  }

  protected post(worker: Worker, message: To | ToServiceWorker<StartOptions>): void {
    worker.postMessage(message);
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
    const label = (this.log.levels.labels[level ?? 30] ?? 'info') as LogLevel;
    this.log[label](fields, msg ?? '');
  }

  #onExit(worker: Worker, code: number): void {
    if (this.#worker !== worker) return;
    this.#worker = null;
    this.onWorkerGone();
    if (this.#stopping) return;
    if (this.#restarts >= MAX_RESTARTS) {
      this.log.fatal({ code, restarts: this.#restarts }, `${this.name} thread exited again: ${this.name.toUpperCase()} is down`);
      return;
    }
    this.#restarts++;
    this.log.error({ code, restarts: this.#restarts }, `${this.name} thread exited: restarting it`);
    this.start().catch((err: unknown) => this.log.fatal({ err }, `${this.name} thread restart failed: ${this.name.toUpperCase()} is down`));
  }
}
