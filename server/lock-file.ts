import { readFileSync } from 'node:fs';
import { link, open, readFile, rename, rm, stat } from 'node:fs/promises';

export interface LockOptions {
  signal?: AbortSignal;
  /** Give up after this long (default: wait as long as the holder lives). */
  timeoutMs?: number;
  /** What is locked, for the timeout error. */
  what?: string;
  /** Told when a stale lock (dead holder, or empty/garbled file) is taken over, and why. */
  onTakeover?: (reason: string) => void;
  /** An empty or garbled lock older than this is a writer that died between create and write (default 10 s). */
  staleEmptyMs?: number;
}

/**
 * Takes a lock file holding our pid and start time, waiting while another live process holds
 * it. A lock whose holder died is taken over, also when its pid now names another process (a
 * container's server is pid 1 every time: a build killed with its container left a lock of
 * "pid 1" that the next container's pid 1 would otherwise wait on forever); so is an empty or
 * garbled one that stayed so for `staleEmptyMs` (the holder died, or the disk filled, between
 * creating it and writing the pid).
 * Resolves with the release function.
 */
export async function acquireLockFile(path: string, options: LockOptions = {}): Promise<() => Promise<void>> {
  const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
  const staleEmptyMs = options.staleEmptyMs ?? 10_000;
  for (let attempt = 0; ; attempt++) {
    options.signal?.throwIfAborted();
    if (await tryCreate(path)) return () => rm(path, { force: true });
    const held = await holder(path);
    if (held === null) continue; // released meanwhile
    const stale = staleReason(held, staleEmptyMs);
    if (stale !== null) {
      if (await takeOver(path, held.ino)) options.onTakeover?.(`took over the stale lock ${path}: ${stale}`);
      continue;
    }
    if (Date.now() > deadline) throw new Error(`${options.what ?? path} is held by ${held.pid === null ? 'an unknown process (empty lock file)' : `pid ${held.pid}`} (${path})`);
    await new Promise((resolve) => setTimeout(resolve, Math.min(1000, 50 * (attempt + 1))));
  }
}

type Holder = { pid: number | null; started: string | null; text: string; ino: number; mtimeMs: number };

/** Why the lock's holder can no longer hold it, or null while it may. */
function staleReason(held: Holder, staleEmptyMs: number): string | null {
  const { pid } = held;
  if (pid === null) {
    const age = Date.now() - held.mtimeMs;
    if (age <= staleEmptyMs) return null;
    return `it has held no pid for ${Math.round(age / 1000)} s (${held.text ? `content ${JSON.stringify(held.text.slice(0, 20))}` : 'empty'}: its writer died or the disk was full)`;
  }
  if (!isAlive(pid)) return `its holder, pid ${pid}, is gone`;
  if (held.started !== null) {
    const now = processStartTime(pid);
    return now !== null && now !== held.started ? `its holder, pid ${pid} started at tick ${held.started}, is gone (pid ${pid} is now another process)` : null;
  }
  // A lock of only a pid (written before locks held start times): the process with that pid
  // now cannot have written it if it started after the lock's last change.
  const startedAt = processStartedAtMs(pid);
  if (startedAt !== null && startedAt > held.mtimeMs + PID_START_SLACK_MS) {
    return `its holder, pid ${pid}, is gone (pid ${pid} is now a process started after the lock was written)`;
  }
  return null;
}

async function tryCreate(path: string): Promise<boolean> {
  let handle;
  try {
    handle = await open(path, 'wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await handle.writeFile(`${lockOwner()}\n`);
    await handle.close();
    return true;
  } catch (err) {
    // Disk full after the create: leave no empty lock (and no open handle) behind.
    await handle.close().catch(() => {});
    await rm(path, { force: true });
    throw err;
  }
}

/** What a lock we take holds: `pid starttime`, or only the pid where /proc is not there to read. */
function lockOwner(): string {
  const started = processStartTime(process.pid);
  return started === null ? String(process.pid) : `${process.pid} ${started}`;
}

/**
 * When the process started, in clock ticks since boot (/proc/PID/stat, field 22), or null when
 * it cannot be read (no such process, no /proc). With the pid, it names one process for the
 * whole uptime: a recycled pid has another start time.
 */
export function processStartTime(pid: number): string | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const started = fields[22 - 3];
  return started !== undefined && /^\d+$/.test(started) ? started : null;
}

/** Start times from /proc are in 1/100 s since boot, and boot time is in whole seconds. */
const PID_START_SLACK_MS = 2_000;
/** /proc's clock tick (USER_HZ): 100 on every Linux architecture. */
const USER_HZ = 100;

/** When the process started, wall clock (ms), or null when /proc cannot tell. */
function processStartedAtMs(pid: number): number | null {
  const ticks = processStartTime(pid);
  let bootSeconds: number | undefined;
  try {
    bootSeconds = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1]);
  } catch {
    return null;
  }
  if (ticks === null || !bootSeconds) return null;
  return bootSeconds * 1000 + (Number(ticks) * 1000) / USER_HZ;
}

async function holder(path: string): Promise<Holder | null> {
  try {
    const info = await stat(path);
    const text = (await readFile(path, 'utf8')).trim();
    const m = /^(\d{1,10})(?: (\d{1,20}))?$/.exec(text);
    const pid = m && Number(m[1]) > 0 ? Number(m[1]) : null;
    return { pid, started: pid === null ? null : (m?.[2] ?? null), text, ino: info.ino, mtimeMs: info.mtimeMs };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Removes the stale lock we judged (by inode), never a fresh one another waiter created after
 * taking it over first: the file is moved aside atomically, and put back when it was not ours to take.
 */
async function takeOver(path: string, ino: number): Promise<boolean> {
  const aside = `${path}.stale-${process.pid}-${Date.now()}`;
  try {
    await rename(path, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  const moved = await stat(aside).catch(() => null);
  if (moved && moved.ino !== ino) {
    await link(aside, path).catch(() => {}); // someone else's live lock: restore it (unless a third took the slot)
    await rm(aside, { force: true });
    return false;
  }
  await rm(aside, { force: true });
  return true;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
