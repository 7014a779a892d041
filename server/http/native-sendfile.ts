import type { Logger } from '../log.ts';
import { loadAddon } from '../native-addon.ts';
import { atBulkPriority } from '../threads/priority.ts';

/**
 * The netboot_sendfile addon (native/sendfile/, built by `npm ci` through binding.gyp):
 * sends a file range to a connected TCP socket with sendfile(2) on native threads (one per
 * core, at most 8; NETBOOT_SENDFILE_THREADS overrides).
 * Absent when the addon was not built (no compiler, not Linux): callers then copy through
 * userspace (see send-file.ts).
 */

interface Binding {
  start(socketFd: number, fileFd: number, offset: number, length: number, done: (bytes: number, errno: number) => void): number;
  cancel(job: number): void;
  activeJobs(): number;
  stats(): { started: number; bytesSent: number; threads: number; threadBytes: number[] };
}

export interface NativeSendResult {
  /** Bytes handed to the socket. */
  bytes: number;
  /** 0 when the whole range was sent; else why it stopped (ECANCELED after cancel, EPIPE, ECONNRESET, ENODATA: the file was shorter). */
  errno: number;
}

export interface NativeSendJob {
  result: Promise<NativeSendResult>;
  /** Stops the job soon; `result` then resolves with the bytes sent so far (errno ECANCELED unless it had already finished). */
  cancel(): void;
}

export const ECANCELED = 125;

const { binding, error: loadError } = loadAddon<Binding>('netboot_sendfile');
let threadsStarted = false;

/** Whether the addon loaded, and if not, why. */
export function nativeSendfileStatus(): { available: true } | { available: false; reason: string } {
  return binding ? { available: true } : { available: false, reason: loadError?.message ?? 'not loaded' };
}

let logged = false;
/** One debug line saying which body path downloads take (call once at server start). */
export function logSendfilePath(log: Logger): void {
  if (logged) return;
  logged = true;
  const status = nativeSendfileStatus();
  if (status.available) log.debug({ sendfile: 'native' }, 'artifact bodies go out with sendfile(2) on native threads');
  else log.warn({ sendfile: 'copy', reason: status.reason }, 'sendfile addon not loaded: artifact bodies are copied through userspace (about half the throughput); fix: npm ci with g++ and make installed');
}

/**
 * Starts sending `length` bytes of `fileFd` from `offset` to `socketFd`. Both fds are
 * duplicated: the caller may close its own at any time. Returns null when the addon is not
 * loaded; throws when the fd is not a non-blocking stream socket or cannot be duplicated.
 */
export function startNativeSend(socketFd: number, fileFd: number, offset: number, length: number): NativeSendJob | null {
  if (!binding) return null;
  let resolveResult!: (result: NativeSendResult) => void;
  const result = new Promise<NativeSendResult>((resolve) => {
    resolveResult = resolve;
  });
  let finished = false;
  const start = () =>
    binding!.start(socketFd, fileFd, offset, length, (bytes, errno) => {
      finished = true;
      resolveResult({ bytes, errno });
    });
  // The first job starts the addon's threads: they take the priority of the thread starting them.
  const job = threadsStarted ? start() : atBulkPriority(start);
  threadsStarted = true;
  const native = binding;
  return {
    result,
    cancel: () => {
      if (!finished) native.cancel(job);
    },
  };
}

/** Jobs started and not yet reported back, totals since the addon loaded, its worker threads and each one's bytes (null without the addon). */
export function nativeSendfileCounters(): { activeJobs: number; started: number; bytesSent: number; threads: number; threadBytes: number[] } | null {
  return binding ? { activeJobs: binding.activeJobs(), ...binding.stats() } : null;
}
