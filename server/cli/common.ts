import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option, type Command } from 'commander';
import type { LOG_LEVELS } from '../log.ts';

/*
 * Imported by every command's registration, which runs on every `bin/netboot` call, even
 * `--help`: keep it light (no pino, zod or config loading here; those are in setup.ts, which
 * the command actions import when they run).
 */

/** Exit codes shared by every subcommand. */
export const EXIT = { ok: 0, failure: 1, usage: 2, config: 3, missingTools: 4, timeout: 5 } as const;

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The example config, used when --config is not given. */
export const DEFAULT_CONFIG = join(REPO_ROOT, 'config/netboot.yaml');

/** log.ts's LOG_LEVELS, spelled out so that registering --log-level does not load pino; `satisfies` keeps the two equal. */
const LOG_LEVEL_CHOICES = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const satisfies typeof LOG_LEVELS;

export interface CommonOptions {
  config: string;
  logLevel: (typeof LOG_LEVELS)[number];
}

export function withCommonOptions(command: Command): Command {
  return command
    .addOption(new Option('-c, --config <path>', 'config file').default(DEFAULT_CONFIG, 'the embedded example config/netboot.yaml'))
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVEL_CHOICES).default('info'));
}
