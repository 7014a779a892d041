/**
 * bench/nbd (issue 8), two parts, both by default:
 *
 * throughput: sequential read throughput of our NBD export vs Debian's nbd-server on the same
 * file, both on 127.0.0.1, read by nbdcopy into `null:` (no disk writes on the client side).
 * Two client shapes: one connection, and nbdcopy's default (up to 4 connections when the
 * server advertises multi-conn). Alternating rounds, medians, ratio ours/nbd-server.
 * Our server runs in its own Node process (as nbd-server runs in its own), with default limits.
 *
 * boot: the e2e suite's systemd Debian image booted in QEMU with `root: ram` and `root: nbd`
 * from one lab server, alternating: time to userspace and bytes transferred, as ratios
 * (bench/lib/boot-compare.ts). Needs root, QEMU and the e2e fixtures (cached after a first build).
 *
 *   node --import tsx bench/nbd.ts [--only throughput|boot] [--size-mb 200] [--rounds N]
 *        [--boot-rounds N] [--boot-images debian,busybox]
 *
 * --rounds: rounds of the part(s) run (defaults: throughput 3, boot 2); --boot-rounds overrides it
 * for the boot part. --boot-images: debian (default; the realistic case) and/or busybox.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { writeRandomFile } from './lib/files.ts';
import { cleanupOnInterrupt } from './lib/interrupt.ts';

const run = promisify(execFile);
const EXPORT = 'benchimage0001';

function stringArg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function arg(name: string, fallback: number): number {
  const value = stringArg(name);
  return value === undefined ? fallback : Number(value);
}

async function serveMode(file: string): Promise<void> {
  const { NbdServer } = await import('../server/nbd/server.ts');
  const server = new NbdServer({ lookupExport: (name) => (name === EXPORT ? { path: file, size: 0 } : null) });
  const { port } = await server.start({ host: '127.0.0.1', port: 0 });
  process.once('SIGTERM', () => void server.stop().then(() => process.exit(0)));
  process.send?.({ port });
}


async function startOurs(file: string): Promise<{ port: number; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--serve', file], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m) => resolve((m as { port: number }).port));
    child.once('exit', (code) => reject(new Error(`our server exited with ${code}`)));
  });
  return { port, child };
}

/** CPU seconds of a process including its reaped children (nbd-server forks one per connection). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // after "pid (comm) ": state=0 ... utime=11 stime=12 cutime=13 cstime=14 (clock ticks, 100 Hz)
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100;
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

async function startNbdServer(dir: string, file: string): Promise<{ port: number; pid: number; stop: () => Promise<void> }> {
  const port = await freePort();
  const conf = join(dir, 'nbd-server.conf');
  const pidFile = join(dir, 'nbd-server.pid');
  writeFileSync(conf, `[generic]\nlistenaddr = 127.0.0.1\nport = ${port}\n[${EXPORT}]\nexportname = ${file}\nreadonly = true\n`);
  await run('nbd-server', ['-C', conf, '-p', pidFile]);
  for (let i = 0; i < 100; i++) {
    try {
      await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/${EXPORT}`]);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  return {
    port,
    pid,
    async stop() {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(pid, 0);
          await new Promise((r) => setTimeout(r, 20));
        } catch {
          return;
        }
      }
    },
  };
}

/** Seconds nbdcopy takes to read the whole export into null:. */
async function copySeconds(port: number, connections: number | null): Promise<number> {
  const args = [...(connections === null ? [] : [`--connections=${connections}`]), `nbd://127.0.0.1:${port}/${EXPORT}`, 'null:'];
  const start = process.hrtime.bigint();
  await run('nbdcopy', args, { timeout: 300_000 });
  return Number(process.hrtime.bigint() - start) / 1e9;
}

async function throughput(sizeMb: number, rounds: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-nbd-'));
  const file = join(dir, 'rootfs.squashfs');
  let ours: { port: number; child: ChildProcess } | null = null;
  let reference: { port: number; pid: number; stop: () => Promise<void> } | null = null;
  const cleanup = async () => {
    ours?.child.kill('SIGTERM');
    await reference?.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  const unregister = cleanupOnInterrupt(cleanup);
  try {
    await writeRandomFile(file, sizeMb * 2 ** 20);
    ours = await startOurs(file);
    reference = await startNbdServer(dir, file);
    const { stdout: refInfo } = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${reference.port}/${EXPORT}`]);
    const refMultiConn = (JSON.parse(refInfo) as { exports: { can_multi_conn: boolean }[] }).exports[0]!.can_multi_conn;
    // warm the page cache so both read from memory
    await copySeconds(ours.port, 1);

    const shapes: { label: string; connections: number | null }[] = [
      { label: '1 connection', connections: 1 },
      { label: 'nbdcopy default', connections: null },
    ];
    const results = new Map<string, { ours: number[]; ref: number[] }>();
    for (const shape of shapes) results.set(shape.label, { ours: [], ref: [] });
    const cpu = { ours: 0, ref: 0 };
    for (let round = 0; round < rounds; round++) {
      for (const shape of shapes) {
        const r = results.get(shape.label)!;
        let before = cpuSeconds(ours.child.pid!);
        r.ours.push(sizeMb / 1024 / (await copySeconds(ours.port, shape.connections)));
        cpu.ours += cpuSeconds(ours.child.pid!) - before;
        before = cpuSeconds(reference.pid);
        r.ref.push(sizeMb / 1024 / (await copySeconds(reference.port, shape.connections)));
        await new Promise((res) => setTimeout(res, 100)); // let nbd-server reap its per-connection children
        cpu.ref += cpuSeconds(reference.pid) - before;
      }
    }
    const gibRead = (rounds * shapes.length * sizeMb) / 1024;
    const median = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      const m = Math.floor(s.length / 2);
      return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
    };
    const f = (x: number) => x.toFixed(2);
    console.log(`\nbench/nbd: ${sizeMb} MiB file, nbdcopy -> null:, ${rounds} alternating rounds, 127.0.0.1 (nbd-server multi-conn: ${refMultiConn})\n`);
    console.log('| client shape     | netboot GiB/s (rounds) | nbd-server GiB/s (rounds) | median ratio |');
    console.log('|------------------|------------------------|---------------------------|--------------|');
    for (const [label, r] of results) {
      console.log(
        `| ${label.padEnd(16)} | ${`${f(median(r.ours))} (${r.ours.map(f).join(' ')})`.padEnd(22)} | ${`${f(median(r.ref))} (${r.ref.map(f).join(' ')})`.padEnd(25)} | ${f(median(r.ours) / median(r.ref)).padStart(11)}x |`,
      );
    }
    console.log(`\nserver CPU per GiB read: netboot ${(cpu.ours / gibRead).toFixed(2)} s, nbd-server ${(cpu.ref / gibRead).toFixed(2)} s (incl. its per-connection children)`);
    console.log(`target: ratio >= 0.8x. load average at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 shared cores)`);
  } finally {
    await cleanup();
    unregister();
  }
}

async function main(): Promise<void> {
  const serveIndex = process.argv.indexOf('--serve');
  if (serveIndex >= 0) return serveMode(process.argv[serveIndex + 1]!);

  const only = stringArg('only');
  if (only !== undefined && only !== 'throughput' && only !== 'boot') throw new Error(`--only ${only}: expected throughput or boot`);
  if (only !== 'boot') await throughput(arg('size-mb', 200), arg('rounds', 3));
  if (only !== 'throughput') {
    const images = (stringArg('boot-images') ?? 'debian').split(',');
    for (const image of images) if (image !== 'debian' && image !== 'busybox') throw new Error(`--boot-images: unknown image ${image}`);
    const { runBootComparison } = await import('./lib/boot-compare.ts');
    await runBootComparison({ rounds: arg('boot-rounds', arg('rounds', 2)), images: images as ('debian' | 'busybox')[] });
  }
}

await main();
