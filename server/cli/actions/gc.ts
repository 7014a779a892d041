import { idsStreamedByServer } from '../../app/ids-in-use.ts';
import { openImageCache } from '../../app/images.ts';
import type { GcOptions } from '../gc.ts';
import { loadConfigOrExit, loggerFor } from '../setup.ts';

export async function runGc(options: GcOptions): Promise<void> {
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
}
