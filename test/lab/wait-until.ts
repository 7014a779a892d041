/**
 * Polls `condition` until it holds. The timeout only guards against a hang (generous by
 * default, so a busy machine never fails a test that is merely slow); on expiry it throws
 * saying what did not happen, instead of letting the next assertion fail with less context.
 */
export async function waitUntil(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 60_000, pollMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
