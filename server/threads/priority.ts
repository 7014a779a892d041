/**
 * The control plane goes first when the CPU is short. The main thread (DHCP answers, scripts,
 * layers, events) and the TFTP thread run some nice steps above the process's bulk work: the
 * NBD thread, the sendfile threads, libuv's file threads and image builds. On 2 cores shared with
 * a 500-machine simulated fleet this took the script request's p99 from 104-140 ms to 36-55 ms
 * (README, "Admission control").
 *
 * Linux keeps a nice value per thread, and a new thread or child process takes the one of the
 * thread that starts it. So the main thread raises its own, and every bulk thread or child it
 * starts afterwards is started inside atBulkPriority(), which lowers the main thread for just
 * that call. Raising needs CAP_SYS_NICE or an RLIMIT_NICE that allows it (systemd's LimitNICE,
 * Docker's `--ulimit nice`); lowering never needs a privilege.
 */
import { stat } from 'node:fs/promises';
import { getPriority, setPriority } from 'node:os';

export type ControlPlanePriority =
  | { raised: true; controlNice: number; bulkNice: number }
  | { raised: false; nice: number; reason: string };

let raisedTo: { controlNice: number; bulkNice: number } | null = null;

/**
 * Raises the calling (main) thread `steps` nice values above the process's current one. Call once
 * at server start, before any service thread starts. Never throws: without the privilege the
 * server runs as before, and the result says why.
 */
export async function raiseControlPlanePriority(steps: number): Promise<ControlPlanePriority> {
  const nice = getPriority(0);
  if (steps <= 0) return { raised: false, nice, reason: 'server.controlPlanePriority is 0' };
  if (process.platform !== 'linux') return { raised: false, nice, reason: 'per-thread priorities need Linux' };
  const controlNice = Math.max(-20, nice - steps);
  if (controlNice === nice) return { raised: false, nice, reason: 'already at the highest priority (nice -20)' };
  // libuv starts its file threads at their first job, with the priority of the thread that asks:
  // ask once now, so they start at the bulk priority.
  await stat('/');
  try {
    setPriority(0, controlNice);
  } catch (err) {
    // Node's SystemError keeps the errno name in info.code (its own code is ERR_SYSTEM_ERROR).
    const code = (err as { info?: { code?: string } }).info?.code ?? (err as NodeJS.ErrnoException).code ?? String(err);
    return { raised: false, nice, reason: `${code}: needs CAP_SYS_NICE or RLIMIT_NICE of at least ${20 - controlNice} (systemd LimitNICE=${controlNice}, docker --ulimit nice=${20 - controlNice})` };
  }
  raisedTo = { controlNice, bulkNice: nice };
  return { raised: true, controlNice, bulkNice: nice };
}

/**
 * Runs `start` (which starts a thread or child process doing bulk work) with the calling thread
 * at the bulk priority, so that what it starts inherits that one. Main thread only; a no-op
 * unless raiseControlPlanePriority() raised it.
 */
export function atBulkPriority<T>(start: () => T): T {
  const raised = raisedTo;
  if (!raised) return start();
  setPriority(0, raised.bulkNice);
  try {
    return start();
  } finally {
    try {
      setPriority(0, raised.controlNice);
    } catch {
      raisedTo = null; // the privilege is gone: the control plane stays at the bulk priority
    }
  }
}
