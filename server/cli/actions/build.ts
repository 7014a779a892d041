import { buildImage, openImageCache } from '../../app/images.ts';
import { formatBytes, progressReporter } from '../../app/progress.ts';
import { guardAgainstStalledBuilds } from '../../images/stall-guard.ts';
import { EXIT, type CommonOptions } from '../common.ts';
import { loadConfigOrExit, loggerFor } from '../setup.ts';

export async function runBuild(names: string[], options: CommonOptions): Promise<void> {
  const config = loadConfigOrExit(options.config);
  const log = loggerFor(options);
  const unknown = names.filter((name) => !config.images.has(name));
  if (unknown.length) {
    process.stderr.write(`unknown image${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${[...config.images.keys()].join(', ')})\n`);
    process.exit(EXIT.usage);
  }
  const cache = openImageCache(config, log);
  const images = names.length ? names.map((name) => config.images.get(name)!) : [...config.images.values()];
  let failed = 0;
  // A build that stalls would end the process with Node's silent exit 13: name it, clean up, fail.
  const guard = guardAgainstStalledBuilds(cache, EXIT.failure);
  for (const image of images) {
    guard.building(image.name);
    try {
      const built = await buildImage(cache, image, log, { onProgress: progressReporter(log) });
      const { manifest } = built;
      const sizes = Object.entries(manifest.artifacts).map(([name, info]) => `${name} ${formatBytes(info!.size)}`);
      process.stdout.write(
        `${image.name}: ${built.cached ? 'up to date' : 'built'} id ${built.id} (kernel ${manifest.kernelVersion}, ${manifest.buildSeconds.toFixed(1)} s)\n  ${sizes.join(', ')}\n`,
      );
    } catch (err) {
      failed++;
      process.stderr.write(`${image.name}: build failed: ${(err as Error).message}\n`);
    }
  }
  guard.building(null);
  guard.dispose();
  if (failed) process.exitCode = EXIT.failure;
}
