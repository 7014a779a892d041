/** Build ids: 16 hex digits derived from the image's content and the build inputs (see cache.ts). */
export const IMAGE_ID_PATTERN = /^[0-9a-f]{16}$/;

/** Whether `id` has the form of a build id; anything else never reaches the disk. */
export function isImageId(id: string): boolean {
  return IMAGE_ID_PATTERN.test(id);
}
