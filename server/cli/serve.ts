import type { Command } from 'commander';
import { withCommonOptions, type CommonOptions } from './common.ts';

export function registerServe(program: Command): void {
  withCommonOptions(program.command('serve'))
    .description('serve DHCP, TFTP and HTTP boot for the machines in the config (reloads the config when it changes)')
    .action(async (options: CommonOptions) => (await import('./actions/serve.ts')).runServe(options));
}
