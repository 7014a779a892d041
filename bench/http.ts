/**
 * bench/http: our HTTP service vs nginx serving the same 200 MB rootfs.squashfs to 50
 * concurrent clients (wrk -c 50 -t 2 -d 10s), in the same run, one after the other.
 * Prints throughput of each, the ratio, and our server's peak RSS (VmHWM of the child
 * process) plus its RSS sampled during the run.
 *
 *   node --import tsx bench/http.ts [--size-mb 200] [--seconds 10] [--connections 50] [--rounds 3]
 *
 * nginx runs with one worker (our server is one Node process), sendfile on, on 127.0.0.1.
 * With the sendfile addon built (npm ci), our bodies go out by sendfile(2) on its native thread; NETBOOT_SENDFILE=copy in the environment measures the userspace copy loop instead.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { writeRandomFile } from './lib/files.ts';

const run = promisify(execFile);
const ID = 'benchimage0001';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

async function serveMode(dir: string, port: number): Promise<void> {
  const { parseConfig } = await import('../server/config/load.ts');
  const { createHttpServer } = await import('../server/http/server.ts');
  const { Metrics } = await import('../server/events/metrics.ts');
  const { Timeline } = await import('../server/events/timeline.ts');
  const { silentLogger } = await import('../server/log.ts');
  const config = parseConfig(`server:\n  address: 127.0.0.1\n  httpPort: ${port}\nimages:\n  bench:\n    source: docker:bench\n`, join(dir, 'netboot.yaml'));
  const metrics = new Metrics();
  const app = await createHttpServer({
    getConfig: () => config,
    artifacts: {
      currentId: () => ID,
      artifactPath: (id, name) => join(dir, 'cache', id, name),
      manifest: () => null,
      list: () => [],
    },
    timeline: new Timeline({ metrics }),
    metrics,
    log: silentLogger,
    stateDir: join(dir, 'state'),
  });
  await app.listen({ host: '127.0.0.1', port });
  // A normal exit (not death by signal) lets `node --cpu-prof` write its profile.
  process.once('SIGTERM', () => process.exit(0));
  process.send?.('ready');
}


function parseBytes(text: string): number {
  const m = /([\d.]+)([KMGT]?)B/.exec(text);
  if (!m) throw new Error(`cannot parse size ${text}`);
  return Number(m[1]) * 1024 ** ' KMGT'.indexOf(m[2] || ' ');
}

interface WrkResult {
  bytesPerSecond: number;
  requests: number;
  errors: string;
}

async function wrk(url: string, connections: number, seconds: number): Promise<WrkResult> {
  const { stdout } = await run('wrk', ['-c', String(connections), '-t', '2', '-d', `${seconds}s`, '--timeout', '60s', url], { maxBuffer: 1 << 20 });
  const transfer = /Transfer\/sec:\s+(\S+)/.exec(stdout);
  const requests = /(\d+) requests in/.exec(stdout);
  const errors = /Socket errors:.*|Non-2xx.*/.exec(stdout);
  if (!transfer || !requests) throw new Error(`unexpected wrk output:\n${stdout}`);
  return { bytesPerSecond: parseBytes(transfer[1]!), requests: Number(requests[1]), errors: errors?.[0] ?? 'none' };
}

function status(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

async function waitForHttp(url: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      await run('curl', ['-sf', '-o', '/dev/null', '-r', '0-0', url]);
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new Error(`${url} did not come up`);
}

/** utime + stime of a process, in seconds (clock ticks are 100 Hz on Linux). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** nginx's worker (the master only accepts signals): the child of the master process. */
function nginxWorker(masterPid: number): number {
  const children = readFileSync(`/proc/${masterPid}/task/${masterPid}/children`, 'utf8').trim().split(/\s+/);
  return Number(children[0]);
}

const mb = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;

async function main(): Promise<void> {
  if (process.argv[2] === '--serve') return serveMode(process.argv[3]!, Number(process.argv[4]));
  const sizeMb = arg('size-mb', 200);
  const seconds = arg('seconds', 10);
  const connections = arg('connections', 50);
  const rounds = arg('rounds', 3);
  const dir = mkdtempSync(join(tmpdir(), 'netboot-bench-http-'));
  const children: ChildProcess[] = [];
  try {
    // nginx's worker runs as an unprivileged user: it must be able to read the tree.
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, 'cache', ID), { recursive: true, mode: 0o755 });
    const file = join(dir, 'cache', ID, 'rootfs.squashfs');
    await writeRandomFile(file, sizeMb << 20);
    const ourPort = 18000 + Math.floor(Math.random() * 1000);
    const nginxPort = ourPort + 1000;

    // nginx, one worker, the same file
    writeFileSync(
      join(dir, 'nginx.conf'),
      `daemon off; worker_processes 1; pid ${dir}/nginx.pid; error_log ${dir}/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path ${dir}/nginx-tmp; proxy_temp_path ${dir}/nginx-tmp; fastcgi_temp_path ${dir}/nginx-tmp; uwsgi_temp_path ${dir}/nginx-tmp; scgi_temp_path ${dir}/nginx-tmp;
  server { listen 127.0.0.1:${nginxPort}; root ${dir}/cache; } }
`,
    );
    const nginx = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(nginx);

    const ours = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--serve', dir, String(ourPort)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.push(ours);
    await new Promise<void>((resolve, reject) => {
      ours.once('message', () => resolve());
      ours.once('exit', (code) => reject(new Error(`server exited ${code}`)));
    });
    const ourUrl = `http://127.0.0.1:${ourPort}/images/${ID}/rootfs.squashfs`;
    const nginxUrl = `http://127.0.0.1:${nginxPort}/${ID}/rootfs.squashfs`;
    await waitForHttp(nginxUrl);
    await waitForHttp(ourUrl);
    const rssBefore = status(ours.pid!, 'VmRSS');

    // The machine is shared: alternate the two servers over several rounds and compare medians.
    const samples: number[] = [];
    const sampler = setInterval(() => samples.push(status(ours.pid!, 'VmRSS')), 250);
    const worker = nginxWorker(nginx.pid!);
    const cpu = { ours: 0, nginx: 0 };
    const measured = async (who: 'ours' | 'nginx', pid: number, url: string) => {
      const before = cpuSeconds(pid);
      const result = await wrk(url, connections, seconds);
      cpu[who] += cpuSeconds(pid) - before;
      return result;
    };
    const oursRuns: WrkResult[] = [];
    const nginxRuns: WrkResult[] = [];
    for (let round = 0; round < rounds; round++) {
      if (round % 2 === 0) {
        oursRuns.push(await measured('ours', ours.pid!, ourUrl));
        nginxRuns.push(await measured('nginx', worker, nginxUrl));
      } else {
        nginxRuns.push(await measured('nginx', worker, nginxUrl));
        oursRuns.push(await measured('ours', ours.pid!, ourUrl));
      }
    }
    clearInterval(sampler);
    const peak = status(ours.pid!, 'VmHWM');
    const rssAfter = status(ours.pid!, 'VmRSS');

    const median = (xs: number[]) => {
      const sorted = [...xs].sort((a, b) => a - b);
      const mid = Math.floor(sorted.length / 2);
      return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
    };
    const sorted = [...samples].sort((a, b) => a - b);
    const quart = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
    const gib = (r: WrkResult) => (r.bytesPerSecond / 2 ** 30).toFixed(2);
    console.log(`\nbench/http: ${sizeMb} MiB file, wrk -c ${connections} -t 2 -d ${seconds}s x ${rounds} rounds (alternating), 127.0.0.1, nginx worker_processes 1 + sendfile\n`);
    console.log('| server  | GiB/s per round | median GiB/s | responses (sum) | errors |');
    console.log('|---------|-----------------|--------------|-----------------|--------|');
    for (const [name, runs] of [['netboot', oursRuns], ['nginx', nginxRuns]] as const) {
      const errors = [...new Set(runs.map((r) => r.errors))].join('; ');
      console.log(`| ${name.padEnd(7)} | ${runs.map(gib).join(' ').padEnd(15)} | ${(median(runs.map((r) => r.bytesPerSecond)) / 2 ** 30).toFixed(2).padStart(12)} | ${String(runs.reduce((n, r) => n + r.requests, 0)).padStart(15)} | ${errors} |`);
    }
    const ratio = median(oursRuns.map((r) => r.bytesPerSecond)) / median(nginxRuns.map((r) => r.bytesPerSecond));
    const gibServed = (runs: WrkResult[]) => runs.reduce((n, r) => n + r.bytesPerSecond * seconds, 0) / 2 ** 30;
    console.log(`\nserver CPU per GiB sent: netboot ${(cpu.ours / gibServed(oursRuns)).toFixed(2)} s, nginx ${(cpu.nginx / gibServed(nginxRuns)).toFixed(2)} s`);
    console.log(`ratio netboot/nginx (medians): ${ratio.toFixed(2)}x (target >= 0.8x)`);
    console.log(`netboot RSS: idle ${mb(rssBefore)}, during runs p50 ${mb(quart(0.5))} / p90 ${mb(quart(0.9))} / max ${mb(sorted.at(-1) ?? NaN)} (${samples.length} samples), after ${mb(rssAfter)}, peak VmHWM ${mb(peak)}`);
    console.log(`load average at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 shared cores)`);
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 200));
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
