import type { Command } from 'commander';
import { ConfigStore } from '../config/watch.ts';
import { loadConfigOrExit, loggerFor, withCommonOptions, type CommonOptions } from './common.ts';

export function registerServe(program: Command): void {
  withCommonOptions(program.command('serve'))
    .description('serve DHCP, TFTP and HTTP boot for the machines in the config (reloads the config when it changes)')
    .action(async (options: CommonOptions) => {
      const log = loggerFor(options);
      const store = new ConfigStore(loadConfigOrExit(options.config), log);
      store.watch();
      log.info({ phase: 'serve', config: store.current.file, machines: store.current.machines.size }, 'netboot serving');
      const stop = () => {
        store.close();
        process.exit(0);
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
}
