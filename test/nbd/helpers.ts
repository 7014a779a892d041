import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer, type NbdServerOptions } from '../../server/nbd/server.ts';
import { clientFlags, infoData, option, request } from './wire.ts';

/** A byte-exact NBD peer for tests: writes what it is told, reads exactly what it asks for. */
export class RawClient {
  private chunks: Buffer[] = [];
  private length = 0;
  private ended = false;
  private discarding = false;
  private waiter: (() => void) | null = null;
  readonly closed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => {
      if (this.discarding) return;
      this.chunks.push(c);
      this.length += c.length;
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
  }

  /** `localAddress`: the loopback address to connect from (127.0.0.2 acts as another machine). */
  static connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host, ...(localAddress ? { localAddress } : {}) }, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Exactly n bytes; rejects if the server closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.length < n) {
      if (this.ended) throw new Error(`connection closed after ${this.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.waiter = r));
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.length -= n;
    return all.subarray(0, n);
  }

  /** Greeting in, client flags out. Returns the server's handshake flags. */
  async handshake(flags = 3): Promise<number> {
    const greeting = await this.read(18);
    this.write(clientFlags(flags));
    return greeting.readUInt16BE(16);
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== 0x3e889045565a9n) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const data = await this.read(h.readUInt32BE(16));
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Sends INFO (6) or GO (7) and collects replies up to the final ACK or error. */
  async info(opt: 6 | 7, name: string, infos: number[] = []): Promise<{ type: number; infos: Buffer[] }> {
    this.write(option(opt, infoData(name, infos)));
    const infoReplies: Buffer[] = [];
    for (;;) {
      const r = await this.optionReply();
      if (r.type === 3) infoReplies.push(r.data);
      else return { type: r.type, infos: infoReplies };
    }
  }

  /** Handshake + GO; throws unless the server accepted. Returns the export size. */
  async open(name: string): Promise<number> {
    await this.handshake();
    const r = await this.info(7, name);
    if (r.type !== 1) throw new Error(`GO ${name} answered 0x${r.type.toString(16)}`);
    return Number(r.infos.find((i) => i.readUInt16BE(0) === 0)!.readBigUInt64BE(2));
  }

  async simpleReply(payloadFor?: (handle: bigint) => number): Promise<{ error: number; handle: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`bad reply magic ${h.toString('hex')}`);
    const error = h.readUInt32BE(4);
    const handle = h.readBigUInt64BE(8);
    const n = error === 0 && payloadFor ? payloadFor(handle) : 0;
    return { error, handle, data: await this.read(n) };
  }

  async readAt(offset: number, length: number, handle = 1n): Promise<{ error: number; data: Buffer }> {
    this.write(request(0, handle, offset, length));
    const r = await this.simpleReply(() => length);
    return { error: r.error, data: r.data };
  }

  /** From now on drop whatever the server sends (a client that takes its replies but ignores them). */
  discardIncoming(): void {
    this.discarding = true;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export interface ServerFixture {
  server: NbdServer;
  port: number;
  dir: string;
  files: Map<string, Buffer>;
  path(name: string): string;
  close(): Promise<void>;
}

/** A server on 127.0.0.1 with an export per entry of `sizes` (random contents, files in a temp dir). */
export async function startServer(sizes: Record<string, number>, options: Partial<NbdServerOptions> = {}): Promise<ServerFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-test-'));
  const files = new Map<string, Buffer>();
  for (const [name, size] of Object.entries(sizes)) {
    const data = randomBytes(size);
    files.set(name, data);
    await writeFile(join(dir, name), data);
  }
  const path = (name: string) => join(dir, name);
  const server = new NbdServer({
    lookupExport: (name) => (files.has(name) ? { path: path(name), size: files.get(name)!.length } : null),
    listExports: () => [...files.keys()],
    ...options,
  });
  const { port } = await server.start({ host: '127.0.0.1', port: 0 });
  return {
    server,
    port,
    dir,
    files,
    path,
    async close() {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}
