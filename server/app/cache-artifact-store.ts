import type { ArtifactStore } from '../http/artifact-store.ts';
import type { ImageCache } from '../images/cache.ts';
import { isImageId } from '../images/image-id.ts';
import type { ImageBuilds } from './image-builds.ts';

/** The image cache as the HTTP service sees it (the ArtifactStore contract: unknown or malformed ids are "not found", never errors). */
export function cacheArtifactStore(cache: ImageCache, builds?: ImageBuilds): ArtifactStore {
  return {
    currentId: (name) => cache.currentId(name),
    artifactPath: (id, name) => (isImageId(id) ? cache.artifactPath(id, name) : null),
    manifest: (id) => cache.manifest(id),
    list: async () => (await cache.list()).map((built) => built.manifest),
    ...(builds ? { buildState: (name: string) => builds.state(name), buildError: (name: string) => builds.error(name), buildProgress: (name: string) => builds.progress(name) } : {}),
  };
}
