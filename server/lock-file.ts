import { open, readFile, rm } from 'node:fs/promises';

export interface LockOptions {
  signal?: AbortSignal;
  /** Give up after this long (default: wait as long as the holder lives). */
  timeoutMs?: number;
  /** What is locked, for the timeout error. */
  what?: string;
}

/**
 * Takes a lock file holding our pid, waiting while another live process holds it; a lock
 * whose holder died is taken over. Resolves with the release function.
 */
export async function acquireLockFile(path: string, options: LockOptions = {}): Promise<() => Promise<void>> {
  const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
  for (let attempt = 0; ; attempt++) {
    options.signal?.throwIfAborted();
    try {
      const handle = await open(path, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      return () => rm(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(await readFile(path, 'utf8').catch(() => ''));
      if (pid && !isAlive(pid)) {
        await rm(path, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`${options.what ?? path} is held by pid ${pid} (${path})`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(1000, 50 * (attempt + 1))));
    }
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
