import { ConfigError, formatIssue, loadConfig } from '../config/load.ts';
import type { Config } from '../config/types.ts';
import { createLogger, type Logger } from '../log.ts';
import { EXIT, type CommonOptions } from './common.ts';

/** What command actions share once they run (not imported at registration: see common.ts). */

export function loggerFor(options: CommonOptions): Logger {
  return createLogger(options.logLevel);
}

/** Loads the config or prints every problem (file:line:col) and exits with EXIT.config. */
export function loadConfigOrExit(path: string): Config {
  try {
    return loadConfig(path);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.issues.length} problem${err.issues.length === 1 ? '' : 's'} in ${err.issues[0]?.file}:\n`);
      for (const issue of err.issues) process.stderr.write(`  ${formatIssue(issue)}\n`);
      process.exit(EXIT.config);
    }
    throw err;
  }
}
