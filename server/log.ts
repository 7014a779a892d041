import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * The server's logger: JSON lines when stdout is not a terminal (for journald, CI, log
 * shippers), human-readable lines on a terminal. Every boot-related line carries `mac` and
 * `phase` fields; add them with `log.child({ mac, phase })`.
 */
export function createLogger(level: LevelWithSilent = 'info', pretty = process.stdout.isTTY === true): Logger {
  if (!pretty) return pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime });
  return pino({
    level,
    base: undefined,
    transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } },
  });
}

/** A logger that drops everything: for tests and library callers that pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });
