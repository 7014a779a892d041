/**
 * Ctrl-C (SIGINT) or SIGTERM during a benchmark: run the registered clean-ups (labs, network
 * namespaces, dockerd, servers) before exiting, instead of Node's default of dying at once and
 * leaving them behind. The finally blocks still do the work on the normal path; each clean-up
 * must be safe to run twice.
 */
const cleanups = new Set<() => Promise<unknown>>();
let installed = false;

async function onSignal(signal: NodeJS.Signals): Promise<void> {
  process.stderr.write(`\n${signal}: cleaning up…\n`);
  await Promise.allSettled([...cleanups].reverse().map((cleanup) => cleanup()));
  process.exit(signal === 'SIGINT' ? 130 : 143);
}

/** Registers a clean-up for an interrupt; returns its unregister function. */
export function cleanupOnInterrupt(cleanup: () => Promise<unknown>): () => void {
  if (!installed) {
    installed = true;
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, (s) => void onSignal(s));
  }
  cleanups.add(cleanup);
  return () => void cleanups.delete(cleanup);
}
