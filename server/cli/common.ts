import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option, type Command } from 'commander';
import { createLogger, LOG_LEVELS, type Logger } from '../log.ts';
import { ConfigError, formatIssue, loadConfig } from '../config/load.ts';
import type { Config } from '../config/types.ts';

/** Exit codes shared by every subcommand. */
export const EXIT = { ok: 0, failure: 1, usage: 2, config: 3, missingTools: 4, timeout: 5 } as const;

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The example config, used when --config is not given. */
export const DEFAULT_CONFIG = join(REPO_ROOT, 'config/netboot.yaml');

export interface CommonOptions {
  config: string;
  logLevel: (typeof LOG_LEVELS)[number];
}

export function withCommonOptions(command: Command): Command {
  return command
    .addOption(new Option('-c, --config <path>', 'config file').default(DEFAULT_CONFIG, 'the embedded example config/netboot.yaml'))
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'));
}

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
