/**
 * What the HTTP service needs from the image cache. The lead adapts server/images' cache to
 * it; tests implement it over a temp dir. Methods may answer synchronously or with a promise.
 */
export const ARTIFACT_NAMES = ['vmlinuz', 'initrd.img', 'image-initrd.img', 'rootfs.squashfs', 'rootfs.verity', 'manifest.json'] as const;
export type ArtifactName = (typeof ARTIFACT_NAMES)[number];

export interface ArtifactDigest {
  size: number;
  sha256: string;
}

/** The parts of an image's manifest.json the HTTP service reads. */
export interface ImageManifestView {
  id: string;
  name?: string;
  digest?: string;
  builtAt?: string;
  kernelVersion?: string;
  artifacts: Partial<Record<string, ArtifactDigest>>;
}

export type MaybePromise<T> = T | Promise<T>;

export interface ArtifactStore {
  /** Id of the image's current build, or null when it has never been built. */
  currentId(imageName: string): MaybePromise<string | null>;
  /**
   * Absolute path of an artifact of a build (it may not exist), or null for an id this store can
   * never hold (malformed): callers answer that as "not found". Never throws.
   */
  artifactPath(id: string, name: ArtifactName): string | null;
  /** The build's manifest, or null when there is no such build. */
  manifest(id: string): MaybePromise<ImageManifestView | null>;
  /** Every build in the cache. */
  list(): MaybePromise<ImageManifestView[]>;
  /** Optional: whether a build of the image is running or the last one failed. */
  buildState?(imageName: string): 'idle' | 'building' | 'failed';
  /** Optional: why the image's last build failed (the status page). */
  buildError?(imageName: string): string | undefined;
  /** Optional: where a running build is (the status page shows it live). */
  buildProgress?(imageName: string): { phase: string; bytes: number; totalBytes?: number; rate?: number } | undefined;
}

/** Ids are content hashes; anything else in that URL segment is refused before touching the disk. */
export { isImageId as isValidImageId } from '../images/image-id.ts';
