import { Writable } from 'node:stream';
import { pino, type LoggerOptions } from 'pino';
import type { Logger } from '../../server/log.ts';

/** A pino logger whose lines land, parsed, in `lines` (level info unless told; no pid/hostname). */
export function capturedLog<Line = Record<string, unknown>>(options: LoggerOptions = {}): { lines: Line[]; logger: Logger } {
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Line);
      done();
    },
  });
  return { lines, logger: pino({ level: 'info', base: undefined, ...options }, sink) };
}
