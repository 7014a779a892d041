import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A network namespace this process made: run commands in it, and delete it with all it runs. */
export interface Namespace {
  readonly ns: string;
  /** Runs a command inside the namespace and waits for it. */
  exec(cmd: string, args: string[], opts?: { timeoutMs?: number; input?: string }): Promise<{ stdout: string; stderr: string }>;
  /** Starts a long-running command inside the namespace; killed by destroy(). */
  spawn(cmd: string, args: string[], opts?: SpawnOptions): ChildProcess;
  destroy(): Promise<void>;
}

/**
 * A private network segment for tests: a network namespace holding a bridge (the server
 * side, 10.x.y.1/24) and tap devices for VMs. Anything that speaks DHCP/TFTP/broadcasts runs
 * inside it, never on the host's interfaces. `destroy()` kills what was started in it and
 * deletes the namespace; segments still alive at process exit are deleted too.
 */
export interface Segment extends Namespace {
  readonly bridge: 'br0';
  /** The bridge's address, e.g. 10.77.3.1 */
  readonly serverIp: string;
  /** First three octets, e.g. 10.77.3 */
  readonly subnet: string;
  addTap(name?: string): Promise<string>;
}

/**
 * A second namespace joined to a segment's bridge by a veth pair: a client that must be on
 * the other side of a wire from the server (its broadcasts leave one stack and enter another).
 * Its interface is `eth0`, with no address unless asked.
 */
export interface ClientNamespace extends Namespace {
  readonly ifname: 'eth0';
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

const ip = (...args: string[]) => run('ip', args);

/** Creates a namespace (deleted at process exit if still there) and a handle on it. */
async function makeNamespace(ns: string): Promise<Namespace> {
  installExitHook();
  await ip('netns', 'add', ns);
  live.add(ns);
  const children = new Set<ChildProcess>();
  return {
    ns,
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
}

export async function createSegment(options: SegmentOptions = {}): Promise<Segment> {
  const index = options.subnetIndex ?? 10 + ((process.pid + counter) % 200);
  const serverIp = options.serverIp ?? `10.77.${index}.1`;
  const subnet = serverIp.split('.').slice(0, 3).join('.');
  const handle = await makeNamespace(`nbt${process.pid}x${counter++}`);
  const { ns } = handle;
  let taps = 0;
  try {
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
    await ip('-n', ns, 'link', 'add', 'br0', 'type', 'bridge');
    await ip('-n', ns, 'link', 'set', 'br0', 'type', 'bridge', 'forward_delay', '0', 'stp_state', '0');
    await ip('-n', ns, 'addr', 'add', `${serverIp}/24`, 'dev', 'br0');
    await ip('-n', ns, 'link', 'set', 'br0', 'up');
    // Without this route a dgram broadcast to 255.255.255.255 fails with ENETUNREACH.
    await ip('-n', ns, 'route', 'add', '255.255.255.255/32', 'dev', 'br0');
  } catch (err) {
    await handle.destroy();
    throw err;
  }
  return {
    ...handle,
    bridge: 'br0',
    serverIp,
    subnet,
    async addTap(name = `tap${taps++}`) {
      await ip('-n', ns, 'tuntap', 'add', 'dev', name, 'mode', 'tap');
      await ip('-n', ns, 'link', 'set', name, 'master', 'br0', 'up');
      return name;
    },
  };
}

let clients = 0;

/** A client namespace on the segment's bridge (see ClientNamespace), optionally with a MAC and an address. */
export async function addClientNamespace(segment: Segment, options: { mac?: string; address?: string } = {}): Promise<ClientNamespace> {
  const index = clients++;
  const handle = await makeNamespace(`${segment.ns}c${index}`);
  const { ns } = handle;
  const hostSide = `vc${process.pid % 10000}x${index}`.slice(0, 15);
  try {
    await ip('-n', segment.ns, 'link', 'add', hostSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    await ip('-n', segment.ns, 'link', 'set', hostSide, 'master', segment.bridge, 'up');
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
    if (options.mac) await ip('-n', ns, 'link', 'set', 'eth0', 'address', options.mac);
    await ip('-n', ns, 'link', 'set', 'eth0', 'up');
    if (options.address) await ip('-n', ns, 'addr', 'add', `${options.address}/24`, 'dev', 'eth0');
    await ip('-n', ns, 'route', 'add', '255.255.255.255/32', 'dev', 'eth0');
  } catch (err) {
    await handle.destroy();
    throw err;
  }
  return { ...handle, ifname: 'eth0' };
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
