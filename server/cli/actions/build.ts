import { buildImage, openImageCache } from '../../app/images.ts';
import { formatBytes, progressReporter } from '../../app/progress.ts';
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
  // A build that stops with nothing pending and nothing rejected (a stalled stream) would end
  // the process with Node's silent exit 13: say which image it was and fail properly instead.
  let building: string | null = null;
  const stalled = () => {
    if (building === null) return;
    process.stderr.write(`${building}: build failed: the build stopped without finishing or reporting an error (a stream stalled); nothing was published, the next build cleans up — please report this\n`);
    process.exit(EXIT.failure);
  };
  process.on('beforeExit', stalled);
  for (const image of images) {
    building = image.name;
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
  building = null;
  process.off('beforeExit', stalled);
  if (failed) process.exitCode = EXIT.failure;
}
