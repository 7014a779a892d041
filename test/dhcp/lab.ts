import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { DhcpExchange } from '../../server/dhcp/server.ts';
import { stopChild, type ClientNamespace, type Segment } from '../lab/netns.ts';

export { addClientNamespace, type ClientNamespace } from '../lab/netns.ts';

const REPO = join(import.meta.dirname, '../..');

/** Our DHCP server (server/dhcp/run-standalone.ts) in a child process inside the segment. */
export class DhcpChild {
  readonly exchanges: DhcpExchange[] = [];
  stderr = '';
  #waiters = new Set<() => void>();

  private constructor(readonly child: ChildProcess) {}

  /** With `configFile`, the config is written there (and reload() re-reads it); else it goes through stdin. */
  static async start(segment: Segment, rawConfig: Record<string, unknown>, configFile?: string): Promise<DhcpChild> {
    if (configFile) writeFileSync(configFile, JSON.stringify(rawConfig));
    const child = segment.spawn('node', ['--import', 'tsx', 'server/dhcp/run-standalone.ts', configFile ?? '-'], { cwd: REPO, env: { ...process.env, LOG_LEVEL: 'debug' } });
    const server = new DhcpChild(child);
    child.stderr!.on('data', (chunk: Buffer) => {
      server.stderr += chunk.toString();
      for (const wake of server.#waiters) wake();
    });
    child.stdin!.end(configFile ? undefined : JSON.stringify(rawConfig));
    const ready = new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`DHCP server exited with ${code}: ${server.stderr.slice(-2000)}`)));
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line.startsWith('ready ')) resolve();
        if (line === 'reloaded') {
          server.#reloads++;
          for (const wake of server.#waiters) wake();
        }
        if (line.startsWith('exchange ')) {
          server.exchanges.push(JSON.parse(line.slice('exchange '.length)) as DhcpExchange);
          for (const wake of server.#waiters) wake();
        }
      });
    });
    await ready;
    return server;
  }

  #reloads = 0;

  /** Rewrites the config file and has the server re-read it (SIGHUP); resolves once it has. */
  async reload(configFile: string, rawConfig: Record<string, unknown>): Promise<void> {
    writeFileSync(configFile, JSON.stringify(rawConfig));
    const before = this.#reloads;
    this.child.kill('SIGHUP');
    await new Promise<void>((resolve, reject) => {
      const check = () => {
        if (this.#reloads > before) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve();
        }
      };
      const timer = setTimeout(() => reject(new Error('config not reloaded')), 10_000);
      this.#waiters.add(check);
    });
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** pino lines at level error (50) or above: a throw that reached the loop's safety net. */
  get errorLogs(): string[] {
    return this.stderr.split('\n').filter((line) => /"level":(5\d|60)/.test(line));
  }

  /** Resolves with the first pino line (stderr, JSON) matching, waiting up to `timeoutMs`. */
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const find = () =>
      this.stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find(match);
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = find();
        if (found) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`no matching log line within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  /** Resolves with the first exchange matching, waiting up to `timeoutMs`. */
  waitForExchange(match: (e: DhcpExchange) => boolean, timeoutMs = 10_000): Promise<DhcpExchange> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.exchanges.find(match);
        if (found) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`no matching DHCP exchange within ${timeoutMs} ms; saw ${JSON.stringify(this.exchanges.slice(-5))}`));
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  async stop(): Promise<void> {
    await stopChild(this.child, 2000);
  }
}

export interface Received {
  bytes: Buffer;
  from: string;
  port: number;
}

/**
 * A raw UDP peer (test/dhcp/udp-peer.ts) in some namespace: sends the bytes the test gives it
 * and reports every datagram it receives on its port.
 */
export class UdpPeer {
  readonly inbox: Received[] = [];
  #waiters = new Set<() => void>();
  #echoes: string[] = [];
  /** Markers of send() calls: each one is echoed back by the peer once its datagrams are out. */
  #echoCount = 0;

  private constructor(readonly child: ChildProcess) {}

  static async start(spawner: { spawn: ClientNamespace['spawn'] }, port: number, bind = '0.0.0.0'): Promise<UdpPeer> {
    const child = spawner.spawn('node', ['--import', 'tsx', join(import.meta.dirname, 'udp-peer.ts'), bind, String(port)], { cwd: REPO });
    const peer = new UdpPeer(child);
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const ready = new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`udp peer exited with ${code}: ${stderr}`)));
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const msg = JSON.parse(line) as { ready?: number; recv?: string; from?: string; port?: number; echo?: string };
        if (msg.ready !== undefined) resolve();
        if (msg.echo !== undefined) {
          peer.#echoes.push(msg.echo);
          for (const wake of peer.#waiters) wake();
        }
        if (msg.recv !== undefined) {
          peer.inbox.push({ bytes: Buffer.from(msg.recv, 'hex'), from: msg.from!, port: msg.port! });
          for (const wake of peer.#waiters) wake();
        }
      });
    });
    await ready;
    return peer;
  }

  /** Queues datagrams; resolves when the peer has sent them all. */
  async send(packets: Buffer[], to: string, port: number): Promise<void> {
    const stdin = this.child.stdin!;
    for (const bytes of packets) {
      if (!stdin.write(JSON.stringify({ send: bytes.toString('hex'), to, port }) + '\n')) await once(stdin, 'drain');
    }
    const marker = `m${++this.#echoCount}`;
    stdin.write(JSON.stringify({ echo: marker }) + '\n');
    await this.#waitFor(() => this.#echoes.includes(marker), 60_000);
  }

  async next(match: (r: Received) => boolean, timeoutMs = 10_000): Promise<Received | null> {
    let found: Received | undefined;
    await this.#waitFor(() => (found = this.inbox.find(match)) !== undefined, timeoutMs).catch(() => undefined);
    return found ?? null;
  }

  #waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (condition()) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error('timed out'));
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  async stop(): Promise<void> {
    await stopChild(this.child, 1000);
  }
}
