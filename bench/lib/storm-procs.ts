import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Pids of every process in a network namespace (the server stack's). */
export async function namespacePids(ns: string): Promise<number[]> {
  const { stdout } = await run('ip', ['netns', 'pids', ns]).catch(() => ({ stdout: '' }));
  return stdout.split(/\s+/).filter(Boolean).map(Number);
}

/** utime + stime + reaped children's (nbd-server forks one per client), seconds; 0 for a gone pid. */
export function cpuSeconds(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100;
  } catch {
    return 0;
  }
}

export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * CPU seconds and peak resident memory of a server stack (every process in its namespace,
 * summed) while the storm runs: RSS sampled every 200 ms, CPU as the difference of totals.
 */
export async function watchStack(ns: string): Promise<{ stop: () => Promise<{ cpuSeconds: number; peakRssBytes: number }> }> {
  const cpuAt = async () => (await namespacePids(ns)).reduce((s, pid) => s + cpuSeconds(pid), 0);
  const startCpu = await cpuAt();
  let peak = 0;
  let sampling = false;
  const timer = setInterval(() => {
    if (sampling) return;
    sampling = true;
    void namespacePids(ns)
      .then((pids) => (peak = Math.max(peak, pids.reduce((s, pid) => s + rssBytes(pid), 0))))
      .finally(() => (sampling = false));
  }, 200);
  return {
    async stop() {
      clearInterval(timer);
      const pids = await namespacePids(ns);
      peak = Math.max(peak, pids.reduce((s, pid) => s + rssBytes(pid), 0));
      return { cpuSeconds: (await cpuAt()) - startCpu, peakRssBytes: peak };
    },
  };
}
