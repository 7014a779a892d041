/** The messages every service thread (server/threads/service-thread.ts) shares, beside its own. */

export type ToServiceWorker<StartOptions> =
  /** Start the service; `logLevel` is the main thread's logger's. */
  | { type: 'start'; options: StartOptions & { logLevel: string } }
  /** Stop the service; the worker answers `stopped` and closes its port. */
  | { type: 'stop' };

export type FromServiceWorker =
  | { type: 'listening'; address: string; port: number }
  | { type: 'start-failed'; message: string }
  /** One pino line (JSON) the thread logged. */
  | { type: 'log'; line: string }
  | { type: 'stopped' };
