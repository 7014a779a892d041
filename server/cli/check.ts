import type { Command } from 'commander';
import { withCommonOptions, type CommonOptions } from './common.ts';

export interface CheckOptions extends CommonOptions {
  runtimeOnly?: boolean;
}

export function registerCheck(program: Command): void {
  withCommonOptions(program.command('check'))
    .description('validate the config and report which host tools are present or missing')
    .option('--runtime-only', 'only check the tools the server itself needs, not those for tests/vm/demo')
    .action(async (options: CheckOptions) => (await import('./actions/check.ts')).runCheck(options));
}
