/** A build failure with a message meant for the admin (what was looked for, where, what to do). */
export class ImageError extends Error {
  override name = 'ImageError';
}
