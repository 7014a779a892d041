import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
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

/** CPU seconds of every thread of a process, by `pid/tid` key, with the thread's name (comm): utime + stime. */
export function threadCpu(pid: number): Map<string, { name: string; seconds: number }> {
  const out = new Map<string, { name: string; seconds: number }>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const fields = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
      out.set(`${pid}/${tid}`, { name, seconds: (Number(fields[11]) + Number(fields[12])) / 100 });
    } catch {
      // the thread ended
    }
  }
  return out;
}

/** Per thread name: CPU seconds between two threadCpu() samples (threads new since `before` count from 0), and how many threads had that name. */
export function threadCpuByName(before: Map<string, { name: string; seconds: number }>, after: Map<string, { name: string; seconds: number }>): { name: string; seconds: number; threads: number }[] {
  const byName = new Map<string, { name: string; seconds: number; threads: number }>();
  for (const [key, t] of after) {
    const used = t.seconds - (before.get(key)?.seconds ?? 0);
    const entry = byName.get(t.name) ?? { name: t.name, seconds: 0, threads: 0 };
    entry.seconds += used;
    entry.threads++;
    byName.set(t.name, entry);
  }
  return [...byName.values()].sort((a, b) => b.seconds - a.seconds);
}

/**
 * CPU seconds and peak resident memory of a server stack (every process in its namespace,
 * summed) while the storm runs: RSS sampled every 200 ms, CPU as the difference of totals;
 * and CPU per thread name (netboot's nb-sendfile-N threads against its JS thread `node`,
 * nginx's workers), which shows whether one thread is the ceiling.
 */
export async function watchStack(ns: string): Promise<{ stop: () => Promise<{ cpuSeconds: number; peakRssBytes: number; threadCpu: { name: string; seconds: number; threads: number }[] }> }> {
  const cpuAt = async () => (await namespacePids(ns)).reduce((s, pid) => s + cpuSeconds(pid), 0);
  const threadsAt = async () => new Map((await namespacePids(ns)).flatMap((pid) => [...threadCpu(pid)]));
  const startCpu = await cpuAt();
  const startThreads = await threadsAt();
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
      const threads = threadCpuByName(startThreads, await threadsAt());
      return { cpuSeconds: (await cpuAt()) - startCpu, peakRssBytes: peak, threadCpu: threads };
    },
  };
}
