/**
 * The worker's side of a service thread (see service-thread.ts): answers `start` with
 * `listening` (or `start-failed`) and `stop` with `stopped`, gives the service a logger whose
 * lines go to the main thread, and hands every other message to the service.
 */
import { parentPort } from 'node:worker_threads';
import { pino } from 'pino';
import type { Logger } from '../log.ts';
import type { FromServiceWorker, ToServiceWorker } from './protocol.ts';

export interface ServiceWorker<StartOptions, To> {
  start(options: StartOptions, log: Logger): Promise<{ address: string; port: number }>;
  stop(): Promise<void>;
  onMessage(message: To): void;
}

export function postToMain<From>(message: From | FromServiceWorker): void {
  parentPort!.postMessage(message);
}

export function runServiceWorker<StartOptions, To extends { type: string }>(service: ServiceWorker<StartOptions, To>): void {
  const port = parentPort!;
  port.on('message', (message: To | ToServiceWorker<StartOptions>) => {
    switch (message.type) {
      case 'start': {
        const { logLevel, ...options } = (message as Extract<ToServiceWorker<StartOptions>, { type: 'start' }>).options;
        const log = pino({ level: logLevel, base: undefined }, { write: (line: string) => postToMain({ type: 'log', line }) });
        service.start(options as StartOptions, log).then(
          ({ address, port: bound }) => postToMain({ type: 'listening', address, port: bound }),
          (err: Error) => postToMain({ type: 'start-failed', message: err.message }),
        );
        break;
      }
      case 'stop':
        void service.stop().then(() => {
          postToMain({ type: 'stopped' });
          port.close();
        });
        break;
      default:
        service.onMessage(message as To);
    }
  });
}
