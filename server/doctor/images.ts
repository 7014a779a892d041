import type { Finding } from './finding.ts';

export interface ImageFacts {
  name: string;
  source: string;
  /** The id the image name points at in the cache (its last good build), or null. */
  builtId: string | null;
  /** ok: resolves now; missing: the engine is up but lacks the image (serve pulls it); error: cannot be read. */
  sourceState: { state: 'ok' | 'missing' | 'error'; detail: string };
}

/** Image sources resolve and images are built: a machine can only boot what is built or buildable. */
export function checkImages(images: readonly ImageFacts[], cacheDir: string): Finding[] {
  if (!images.length) {
    return [{ check: 'images', severity: 'fail', summary: 'no images configured: machines have nothing to boot', fix: 'add one under images: (e.g. demo: { source: "docker:REF" }) and point defaults.image or machines at it' }];
  }
  return images.map((image): Finding => {
    const { state, detail } = image.sourceState;
    const label = `image ${image.name} (${image.source})`;
    if (image.builtId) {
      if (state === 'error') {
        return { check: 'images', severity: 'warn', summary: `${label} is built (${image.builtId}) but its source cannot be read: ${detail}`, fix: 'machines boot the cached build; a rebuild fails until the source is back' };
      }
      return { check: 'images', severity: 'ok', summary: `${label} is built (${image.builtId}); source ${detail}` };
    }
    if (state === 'error') {
      return { check: 'images', severity: 'fail', summary: `${label} is not built and its source cannot be read: ${detail}`, fix: 'make the source readable (start the Docker engine / set DOCKER_HOST, or fix the archive path), then run netboot build' };
    }
    return {
      check: 'images',
      severity: 'warn',
      summary: `${label} is not built yet (cache ${cacheDir}); source ${detail}`,
      fix: `run netboot build ${image.name} now; otherwise serve builds it at start and the first boot waits for it`,
    };
  });
}
