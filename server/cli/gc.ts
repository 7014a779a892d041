import type { Command } from 'commander';
import { openImageCache } from '../app/images.ts';
import { loadConfigOrExit, loggerFor, withCommonOptions, type CommonOptions } from './common.ts';

export function registerGc(program: Command): void {
  withCommonOptions(program.command('gc'))
    .description("remove built image ids that no image in the config points at (each image's current id is kept)")
    .option('--keep <n>', 'also keep the N most recently built ids', (v) => Number.parseInt(v, 10), 2)
    .action(async (options: CommonOptions & { keep: number }) => {
      const config = loadConfigOrExit(options.config);
      const cache = openImageCache(config, loggerFor(options));
      const keep = new Set<string>();
      for (const name of config.images.keys()) {
        const id = await cache.currentId(name);
        if (id) keep.add(id);
      }
      const removed = await cache.gc(keep, options.keep);
      process.stdout.write(removed.length ? `removed ${removed.length}: ${removed.join(' ')}\n` : 'nothing to remove\n');
    });
}
