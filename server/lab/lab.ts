import type { ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createWriteStream } from 'node:fs';
import { loadConfig } from '../config/load.ts';
import type { Config } from '../config/types.ts';
import { localReadToken } from '../http/api.ts';
import { REPO_ROOT } from '../cli/common.ts';
import { createSegment, stopChild, type Segment } from './netns.ts';
import { startLabDhcp, startRouterAdvertisements } from './services.ts';
import { Vm, type VmOptions } from './vm.ts';

export interface LabOptions {
  /** The netboot config the server in the lab runs with; its server.address becomes the bridge's address. */
  configFile: string;
  /** Where VM consoles and the server log go. */
  logDir: string;
  /**
   * Also run a separate "lab DHCP server" (dnsmasq) handing out addresses, as in a real lab.
   * Default: when the config's DHCP mode is proxy (a proxy alone gives no addresses).
   */
  labDhcp?: boolean | { bootUrl?: string };
  /** Extra arguments for `netboot serve`. */
  serveArgs?: string[];
  /** Environment for the server (e.g. DOCKER_HOST). */
  env?: NodeJS.ProcessEnv;
  /**
   * Run an IPv6 router advertisement daemon on the segment (default true). false: a segment
   * like most IPv4-only lab networks, where only netboot's own answers to router solicitations
   * (server.ipv6RouterAdvert) keep iPXE from waiting for IPv6.
   */
  routerAdvertisements?: boolean;
}

/**
 * A private lab: a network segment (namespace + bridge at the config's server address),
 * router advertisements (unless turned off), optionally the lab's own DHCP server, `netboot serve` running inside
 * it, and QEMU VMs on taps. `close()` tears everything down; call it in a finally.
 */
export class Lab {
  readonly vms: Vm[] = [];
  #server: ChildProcess | null = null;
  #config: Config | null = null;

  private constructor(
    readonly segment: Segment,
    readonly options: LabOptions,
    readonly baseUrl: string,
  ) {}

  static async start(options: LabOptions): Promise<Lab> {
    const config = loadConfig(options.configFile);
    await mkdir(options.logDir, { recursive: true });
    const segment = await createSegment({ serverIp: config.server.address });
    const lab = new Lab(segment, options, `http://${config.server.address}:${config.server.httpPort}`);
    try {
      if (options.routerAdvertisements ?? true) await startRouterAdvertisements(segment);
      const labDhcp = options.labDhcp ?? config.server.dhcp.mode === 'proxy';
      if (labDhcp) await startLabDhcp(segment, typeof labDhcp === 'object' ? labDhcp : {});
      await lab.#startServer();
    } catch (err) {
      await lab.close();
      throw err;
    }
    return lab;
  }

  get serverLog(): string {
    return join(this.options.logDir, 'netboot-serve.log');
  }

  async #startServer(): Promise<void> {
    const bin = join(REPO_ROOT, 'bin/netboot');
    const args = ['serve', '--config', this.options.configFile, '--log-level', 'debug', ...(this.options.serveArgs ?? [])];
    const child = this.segment.spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.options.env } });
    this.#server = child;
    const log = createWriteStream(this.serverLog, { flags: 'a' });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    await this.waitForServer(120_000);
  }

  /**
   * Stops `netboot serve` (SIGTERM, as an admin's restart would), waits `downMs` with no server,
   * then starts it again with the same config and waits until it answers.
   */
  async restartServer(downMs = 0): Promise<void> {
    if (this.#server) await stopChild(this.#server);
    this.#server = null;
    if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
    await this.#startServer();
  }

  /** Polls /healthz from inside the segment until the server answers. */
  async waitForServer(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.#server && this.#server.exitCode !== null) {
        throw new Error(`netboot serve exited with ${this.#server.exitCode}; see ${this.serverLog}`);
      }
      const ok = await this.segment.exec('curl', ['-sf', '-m', '2', `${this.baseUrl}/healthz`]).then(() => true, () => false);
      if (ok) return;
      await new Promise((r) => setTimeout(r, 300));
    }
    throw new Error(`netboot serve did not answer ${this.baseUrl}/healthz within ${timeoutMs / 1000} s; see ${this.serverLog}`);
  }

  /**
   * Writes a new config file and waits until the running server has reloaded it (its log says
   * "config reloaded"); a rejected config fails here with the server's reason.
   */
  async writeConfig(text: string, timeoutMs = 30_000): Promise<void> {
    const outcomes = async () => {
      const log = await readFile(this.serverLog, 'utf8').catch(() => '');
      return { reloaded: log.split('"msg":"config reloaded"').length, rejected: log.split('"msg":"config rejected').length };
    };
    const before = await outcomes();
    await writeFile(this.options.configFile, text);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = await outcomes();
      if (now.reloaded > before.reloaded) return;
      if (now.rejected > before.rejected) throw new Error(`the server rejected the new config; see ${this.serverLog}`);
      if (Date.now() > deadline) throw new Error(`the server did not reload ${this.options.configFile} within ${timeoutMs / 1000} s; see ${this.serverLog}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * GET a server API path from inside the segment, parsed as JSON. Authenticated with the
   * config's read token, else the host token from the server's state dir (no config needed).
   */
  async api<T = unknown>(path: string): Promise<T> {
    // A rejected config leaves the server on the last good one: so does this.
    try {
      this.#config = loadConfig(this.options.configFile);
    } catch {
      /* keep the last config that loaded */
    }
    const token = this.#config ? localReadToken(this.#config) : null;
    const auth = token ? ['-H', `Authorization: Bearer ${token}`] : [];
    const { stdout } = await this.segment.exec('curl', ['-sf', '-m', '10', ...auth, `${this.baseUrl}${path}`]);
    return JSON.parse(stdout) as T;
  }

  async bootVm(options: Omit<VmOptions, 'logDir'>): Promise<Vm> {
    const vm = new Vm(this.segment, { ...options, logDir: this.options.logDir });
    this.vms.push(vm);
    await vm.start();
    return vm;
  }

  async close(): Promise<void> {
    await Promise.all(this.vms.map((vm) => vm.stop().catch(() => undefined)));
    if (this.#server) await stopChild(this.#server).catch(() => undefined);
    await this.segment.destroy();
  }
}
