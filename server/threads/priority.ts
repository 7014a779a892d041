/**
 * The control plane goes first when the CPU is short. The main thread (DHCP answers, scripts,
 * layers, events) and the TFTP thread run some nice steps above the process's bulk work: the
 * NBD thread, the sendfile threads, libuv's file threads and the image-build tools (child
 * processes). On 2 cores shared with a 500-machine simulated fleet this took the script
 * request's p99 from 104-140 ms to 36-55 ms (README, "Admission control").
 *
 * Linux keeps a nice value per thread, and a new thread or child process takes the one of the
 * thread that starts it. So the main thread raises its own, and every bulk thread or child it
 * starts afterwards is started inside atBulkPriority(), which lowers the main thread for just
 * that call. Raising needs CAP_SYS_NICE or an RLIMIT_NICE that allows it (systemd's LimitNICE,
 * Docker's `--ulimit nice`); lowering never needs a privilege.
 *
 * CPU only: the file I/O of every thread still shares libuv's pool, and V8's helper threads
 * (garbage collection, compiling) keep the process's priority.
 */
import { stat } from 'node:fs/promises';
import { getPriority, setPriority } from 'node:os';

export type ControlPlanePriority =
  | { raised: true; controlNice: number; bulkNice: number; reason?: string }
  | { raised: false; nice: number; reason: string };

let raisedTo: { controlNice: number; bulkNice: number; onLost: (err: Error) => void } | null = null;
/** atBulkPriority calls in progress: only the outermost one raises the thread again. */
let bulkDepth = 0;

/**
 * Raises the calling (main) thread up to `steps` nice values above the process's current one,
 * as far as the privilege allows. Call once at server start, before any service thread starts.
 * Never throws: without the privilege the server runs as before, and the result says why.
 * `onLost` hears if a later re-raise fails (the control plane then stays at the bulk priority).
 */
export async function raiseControlPlanePriority(steps: number, onLost: (err: Error) => void = () => {}): Promise<ControlPlanePriority> {
  const nice = getPriority(0);
  if (steps <= 0) return { raised: false, nice, reason: 'server.controlPlanePriority is 0' };
  if (process.platform !== 'linux') return { raised: false, nice, reason: 'per-thread priorities need Linux' };
  const wanted = Math.max(-20, nice - steps);
  if (wanted === nice) return { raised: false, nice, reason: 'already at the highest priority (nice -20)' };
  // libuv starts its file threads at their first job, with the priority of the thread that asks:
  // ask once now, so they start at the bulk priority.
  await stat('/');
  const fix = `needs CAP_SYS_NICE or RLIMIT_NICE of at least ${20 - wanted} (systemd LimitNICE=${wanted < 0 ? '' : '+'}${wanted}, docker --ulimit nice=${20 - wanted})`;
  let refused = '';
  // RLIMIT_NICE may allow part of the way: take what it allows.
  for (let controlNice = wanted; controlNice < nice; controlNice++) {
    try {
      setPriority(0, controlNice);
    } catch (err) {
      // Node's SystemError keeps the errno name in info.code (its own code is ERR_SYSTEM_ERROR).
      refused ||= (err as { info?: { code?: string } }).info?.code ?? (err as NodeJS.ErrnoException).code ?? String(err);
      continue;
    }
    raisedTo = { controlNice, bulkNice: nice, onLost };
    return { raised: true, controlNice, bulkNice: nice, ...(controlNice === wanted ? {} : { reason: `${nice - controlNice} of ${steps} steps: ${refused}: ${fix}` }) };
  }
  return { raised: false, nice, reason: `${refused}: ${fix}` };
}

/**
 * Runs `start` (which starts a thread or child process doing bulk work) with the calling thread
 * at the bulk priority, so that what it starts inherits that one. Main thread only; a no-op
 * unless raiseControlPlanePriority() raised it.
 */
export function atBulkPriority<T>(start: () => T): T {
  const raised = raisedTo;
  if (!raised) return start();
  if (bulkDepth++ === 0) setPriority(0, raised.bulkNice);
  try {
    return start();
  } finally {
    if (--bulkDepth === 0) {
      try {
        setPriority(0, raised.controlNice);
      } catch (err) {
        raisedTo = null;
        raised.onLost(err as Error);
      }
    }
  }
}
