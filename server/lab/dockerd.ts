import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Dockerode from 'dockerode';
import { acquireLockFile } from '../lock-file.ts';

const run = promisify(execFile);

/**
 * A private Docker engine (tests, `netboot demo`): vfs storage, no iptables, no bridge, its own socket.
 * The data root is stable (the caller's) so images built by earlier runs survive;
 * the exec root and socket are per run. Only one dockerd can own a data root, so a lock file
 * makes concurrent users (several test files, the e2e suite) wait for each other.
 */
export interface Dockerd {
  socketPath: string;
  /** `unix:///…/docker.sock`, for DOCKER_HOST or `docker -H`. */
  host: string;
  docker: Dockerode;
  /** Runs the docker CLI against this engine. */
  cli(args: string[], opts?: { cwd?: string; env?: NodeJS.ProcessEnv }): Promise<{ stdout: string; stderr: string }>;
  stop(): Promise<void>;
}

export async function startDockerd(options: {
  dataRoot: string;
  lockTimeoutMs?: number;
  /** Run the engine inside this network namespace: its host network (`network_mode: host`) is then that namespace. */
  netns?: string;
  /** vfs (default) works on any filesystem; overlay2 copies nothing per layer, where the kernel allows it. */
  storageDriver?: 'vfs' | 'overlay2';
}): Promise<Dockerd> {
  const dataRoot = options.dataRoot;
  await mkdir(dataRoot, { recursive: true });
  const unlock = await acquireLockFile(`${dataRoot}.lock`, { timeoutMs: options.lockTimeoutMs ?? 15 * 60_000, what: `the dockerd data root ${dataRoot}` });
  // Short path: unix socket paths are limited to 108 bytes.
  const runDir = await mkdtemp('/tmp/nbdockerd-');
  const execRoot = join(runDir, 'exec');
  const socketPath = join(runDir, 'docker.sock');
  const pidfile = join(runDir, 'docker.pid');
  const logFile = join(runDir, 'dockerd.log');
  const logHandle = await open(logFile, 'a');
  let child: ChildProcess | undefined;
  const cleanup = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child!.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    await logHandle.close().catch(() => {});
    await unmountUnder(execRoot);
    await unmountUnder(dataRoot);
    await rm(runDir, { recursive: true, force: true }).catch(() => {});
    await unlock();
  };
  try {
    // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts dockerd needs.
    const command = options.netns ? ['nsenter', `--net=/run/netns/${options.netns}`, 'dockerd'] : ['dockerd'];
    child = spawn(
      command[0]!,
      [
        ...command.slice(1),
        `--storage-driver=${options.storageDriver ?? 'vfs'}`,
        '--iptables=false',
        '--ip6tables=false',
        '--bridge=none',
        '-H',
        `unix://${socketPath}`,
        '--data-root',
        dataRoot,
        '--exec-root',
        execRoot,
        '--pidfile',
        pidfile,
      ],
      { stdio: ['ignore', logHandle.fd, logHandle.fd] },
    );
    const docker = new Dockerode({ socketPath });
    await waitForEngine(docker, child, logFile);
    // Containers left by an earlier run that was killed: the lab engine keeps images, not containers.
    for (const c of await docker.listContainers({ all: true })) await docker.getContainer(c.Id).remove({ force: true }).catch(() => {});
    const host = `unix://${socketPath}`;
    return {
      socketPath,
      host,
      docker,
      cli: (args, opts = {}) =>
        run('docker', ['-H', host, ...args], {
          cwd: opts.cwd,
          env: { ...process.env, DOCKER_BUILDKIT: '0', ...opts.env },
          maxBuffer: 256 << 20,
        }),
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

async function waitForEngine(docker: Dockerode, child: ChildProcess, logFile: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  let exitCode: number | null = null;
  child.once('exit', (code) => (exitCode = code ?? -1));
  for (;;) {
    if (exitCode !== null) {
      const log = await readFile(logFile, 'utf8').catch(() => '');
      throw new Error(`dockerd exited with ${exitCode} before answering:\n${log.slice(-2000)}`);
    }
    try {
      await docker.ping();
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`dockerd did not answer within 60 s (log: ${logFile})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Unmounts every mount point below `dir`, deepest first (dockerd leaves netns/shm mounts). */
async function unmountUnder(dir: string): Promise<void> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const points = mounts
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => !!p && (p === dir || p.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const point of points) await run('umount', ['-l', point]).catch(() => {});
}
