import type { Command } from 'commander';
import { idsStreamedByServer } from '../app/ids-in-use.ts';
import { openImageCache } from '../app/images.ts';
import { loadConfigOrExit, loggerFor, withCommonOptions, type CommonOptions } from './common.ts';

export function registerGc(program: Command): void {
  withCommonOptions(program.command('gc'))
    .description("remove built image ids that no image in the config points at (each image's current id is kept, and ids a running server streams over NBD)")
    .option('--keep <n>', 'also keep the N most recently built ids', (v) => Number.parseInt(v, 10), 2)
    .action(async (options: CommonOptions & { keep: number }) => {
      const config = loadConfigOrExit(options.config);
      const cache = openImageCache(config, loggerFor(options));
      const keep = new Set<string>();
      for (const name of config.images.keys()) {
        const id = await cache.currentId(name);
        if (id) keep.add(id);
      }
      const streamed = await idsStreamedByServer(config);
      if (streamed === null) {
        process.stderr.write('no running netboot server answered: ids that machines read over NBD right now cannot be known; only current and recent ids are kept\n');
      } else {
        for (const id of streamed) keep.add(id);
        if (streamed.size > 0) process.stdout.write(`kept ${streamed.size} id(s) machines read over NBD right now: ${[...streamed].join(' ')}\n`);
      }
      const removed = await cache.gc(keep, options.keep);
      process.stdout.write(removed.length ? `removed ${removed.length}: ${removed.join(' ')}\n` : 'nothing to remove\n');
    });
}
