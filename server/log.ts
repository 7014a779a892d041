import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * The server's logger: JSON lines when stdout is not a terminal (for journald, CI, log
 * shippers), human-readable lines on a terminal. Every boot-related line carries `mac` and
 * `phase` fields; add them with `log.child({ mac, phase })`.
 */
export function createLogger(level: LevelWithSilent = 'info', pretty = process.stdout.isTTY === true): Logger {
  if (!pretty) return pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, asyncStdout());
  return pino({
    level,
    base: undefined,
    transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } },
  });
}

/** A logger that drops everything: for tests and library callers that pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });

let stdoutDestination: DestinationStream | null = null;

/** Log bytes held while stdout is not taking them; beyond it lines are dropped, never the server stalled. */
export const STDOUT_BUFFER_BYTES = 16 << 20;

/** Lines are gathered until this many bytes are waiting, or until STDOUT_FLUSH_MS has passed. */
export const STDOUT_BATCH_BYTES = 8 << 10;
export const STDOUT_FLUSH_MS = 100;

/**
 * stdout, written asynchronously and in batches: a write(2) once STDOUT_BATCH_BYTES are waiting
 * or every STDOUT_FLUSH_MS, whichever comes first. A boot storm logs thousands of lines a second;
 * written synchronously, one write(2) each, they took a tenth of the main thread, and a reader
 * that falls behind (a full pipe, a busy journald) would stop the whole server, DHCP and TFTP
 * included, until it caught up. Written one per line, even asynchronously, each line cost a
 * thread-pool hand-off here and a wake-up of the reader (journald, the container runtime): 6500
 * lines paced as in a 500-machine storm took 418 ms of CPU here and 333 ms in a reader copying them
 * to a file, against 274 and 60 batched (bench/log-stdout.ts). Whatever is still buffered is
 * written when the process exits (except the one write in progress if stdout is blocked at that moment).
 */
function asyncStdout(): DestinationStream {
  stdoutDestination ??= pino.destination({
    dest: 1,
    sync: false,
    maxLength: STDOUT_BUFFER_BYTES,
    minLength: STDOUT_BATCH_BYTES,
    periodicFlush: STDOUT_FLUSH_MS,
  });
  return stdoutDestination;
}
