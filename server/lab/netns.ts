import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * A private network segment for tests: a network namespace holding a bridge (the server
 * side, 10.x.y.1/24) and tap devices for VMs. Anything that speaks DHCP/TFTP/broadcasts runs
 * inside it, never on the host's interfaces. `destroy()` kills what was started in it and
 * deletes the namespace; segments still alive at process exit are deleted too.
 */
export interface Segment {
  readonly ns: string;
  readonly bridge: 'br0';
  /** The bridge's address, e.g. 10.77.3.1 */
  readonly serverIp: string;
  /** First three octets, e.g. 10.77.3 */
  readonly subnet: string;
  addTap(name?: string): Promise<string>;
  /** Runs a command inside the namespace and waits for it. */
  exec(cmd: string, args: string[], opts?: { timeoutMs?: number; input?: string }): Promise<{ stdout: string; stderr: string }>;
  /** Starts a long-running command inside the namespace; killed by destroy(). */
  spawn(cmd: string, args: string[], opts?: SpawnOptions): ChildProcess;
  destroy(): Promise<void>;
}

const live = new Set<string>();
let exitHookInstalled = false;
let counter = 0;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test that crashed or was interrupted must not leave namespaces behind.
  process.once('exit', () => {
    for (const ns of live) {
      try {
        execFileSync('ip', ['netns', 'del', ns]);
      } catch {
        /* already gone */
      }
    }
  });
}

export interface SegmentOptions {
  /** 10.77.<subnetIndex>.0/24; default: derived from the pid. */
  subnetIndex?: number;
  /** The bridge's address (a /24 around it), e.g. the config's server.address. Overrides subnetIndex. */
  serverIp?: string;
}

export async function createSegment(options: SegmentOptions = {}): Promise<Segment> {
  installExitHook();
  const index = options.subnetIndex ?? 10 + ((process.pid + counter) % 200);
  const ns = `nbt${process.pid}x${counter++}`;
  const serverIp = options.serverIp ?? `10.77.${index}.1`;
  const subnet = serverIp.split('.').slice(0, 3).join('.');
  const children = new Set<ChildProcess>();
  let taps = 0;
  const ip = (...args: string[]) => run('ip', args);

  await ip('netns', 'add', ns);
  live.add(ns);
  try {
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
    await ip('-n', ns, 'link', 'add', 'br0', 'type', 'bridge');
    await ip('-n', ns, 'link', 'set', 'br0', 'type', 'bridge', 'forward_delay', '0', 'stp_state', '0');
    await ip('-n', ns, 'addr', 'add', `${serverIp}/24`, 'dev', 'br0');
    await ip('-n', ns, 'link', 'set', 'br0', 'up');
    // Without this route a dgram broadcast to 255.255.255.255 fails with ENETUNREACH.
    await ip('-n', ns, 'route', 'add', '255.255.255.255/32', 'dev', 'br0');
  } catch (err) {
    await ip('netns', 'del', ns).catch(() => undefined);
    live.delete(ns);
    throw err;
  }

  const segment: Segment = {
    ns,
    bridge: 'br0',
    serverIp,
    subnet,
    async addTap(name = `tap${taps++}`) {
      await ip('-n', ns, 'tuntap', 'add', 'dev', name, 'mode', 'tap');
      await ip('-n', ns, 'link', 'set', name, 'master', 'br0', 'up');
      return name;
    },
    async exec(cmd, args, opts = {}) {
      const child = run('ip', ['netns', 'exec', ns, cmd, ...args], { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 << 20 });
      if (opts.input !== undefined) child.child.stdin?.end(opts.input);
      return child;
    },
    spawn(cmd, args, opts = {}) {
      const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: 'pipe', ...opts });
      children.add(child);
      child.once('exit', () => children.delete(child));
      return child;
    },
    async destroy() {
      await Promise.all([...children].map((child) => stopChild(child)));
      // Anything else still holding the namespace (a grandchild) goes with it.
      const pids = await ip('netns', 'pids', ns).then((r) => r.stdout.split(/\s+/).filter(Boolean), () => []);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      await ip('netns', 'del', ns).catch(() => undefined);
      live.delete(ns);
    },
  };
  return segment;
}

/** SIGTERM, then SIGKILL after a grace period; resolves when the process has exited. */
export async function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}
