import type { ImageCache } from './cache.ts';

/**
 * A build that stops with nothing pending and nothing rejected (a stream waiting for an event
 * that will never come) lets the event loop run dry: Node would then exit 13 and say nothing,
 * leaving the build's temp dir and lock. `beforeExit` is exactly that moment. While a build is
 * marked as running, the guard names the image, removes what the build left (the cache's
 * abandonSync) and exits with `exitCode`.
 */
export interface StallGuard {
  /** The image being built now, or null between builds. */
  building(name: string | null): void;
  dispose(): void;
}

export function guardAgainstStalledBuilds(cache: ImageCache, exitCode: number): StallGuard {
  let current: string | null = null;
  const stalled = () => {
    if (current === null) return;
    const removed = cache.abandonSync();
    process.stderr.write(
      `${current}: build failed: the build stopped without finishing or reporting an error (a stream stalled); nothing was published` +
        `${removed.length ? ` and its temp dir and lock were removed` : ''} — please report this\n`,
    );
    process.exit(exitCode);
  };
  process.on('beforeExit', stalled);
  return {
    building: (name) => (current = name),
    dispose: () => process.off('beforeExit', stalled),
  };
}
