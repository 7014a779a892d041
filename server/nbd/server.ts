/**
 * The NBD server loop: a TCP listener; per connection the fixed newstyle handshake, then
 * read requests answered from a file descriptor opened when the export was chosen (so an
 * export whose file is replaced or deleted keeps being served to the clients that have it).
 * Reads of all connections share one fair queue with a global concurrency cap.
 * Nothing a client sends can throw out of a connection: protocol errors end that connection.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { silentLogger, type Logger } from '../log.ts';
import {
  BLOCK_SIZE,
  ClientStreamParser,
  Cmd,
  decodeExportName,
  decodeInfoRequest,
  encodeExportNameReply,
  encodeInfoSuccess,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
  encodeServerGreeting,
  encodeSimpleReply,
  Errno,
  EXPORT_TRANSMISSION_FLAGS,
  FLAG_NO_ZEROES,
  NbdProtocolError,
  Opt,
  Rep,
  SIMPLE_REPLY_HEADER_LENGTH,
  writeSimpleReplyHeader,
  type ClientMessage,
} from './codec.ts';
import { BufferPool } from './buffer-pool.ts';
import { FairQueue, type Task } from './fair-queue.ts';

export interface NbdExport {
  /** The file served (for us: `<cacheDir>/images/<id>/rootfs.squashfs`). */
  path: string;
  /** Its size as the caller knows it; the server serves the size of the file it opened. */
  size: number;
}

export interface NbdClientAddress {
  address: string;
  port: number;
}

export interface NbdConnectionEvent {
  /** open: an export was chosen and transmission began; close: the connection ended;
   * refused: over `maxConnections`, closed right after accept. */
  event: 'open' | 'close' | 'refused';
  client: NbdClientAddress;
  /** Null when the connection ended before choosing an export. */
  export: string | null;
  /** Payload bytes sent in read replies on this connection so far. */
  bytes: number;
  /** Read requests answered on this connection so far. */
  requests: number;
  /** Why it closed / was refused. */
  reason?: string;
}

export interface NbdReadEvent {
  client: NbdClientAddress;
  export: string;
  offset: number;
  /** Bytes of this read. */
  length: number;
  /** Totals of the connection including this read. */
  bytes: number;
  requests: number;
  /** From the request being parsed to its reply being handed to the socket. */
  latencyMs: number;
  /** The part of latencyMs spent waiting for a read slot. */
  queuedMs: number;
}

export interface NbdServerOptions {
  /** Export name -> file, or null for an unknown export. Called at each INFO/GO/EXPORT_NAME. */
  lookupExport: (name: string) => NbdExport | null;
  /** Names for NBD_OPT_LIST; without it the list is empty. */
  listExports?: () => string[];
  /** Connections over this are closed right after accept (config.server.nbd.maxConnections). */
  maxConnections?: number;
  /** Reads running at once across all connections; the rest wait in a fair queue. */
  maxConcurrentReads?: number;
  /** Requests a connection may have waiting before we stop reading its socket. */
  maxQueuedPerConnection?: number;
  /** A client that has not chosen an export by then is disconnected. */
  handshakeTimeoutMs?: number;
  /** Option requests allowed per connection before we consider it abuse and disconnect. */
  maxOptionsPerConnection?: number;
  log?: Logger;
  onConnection?: (event: NbdConnectionEvent) => void;
  onRead?: (event: NbdReadEvent) => void;
}

const DEFAULTS = {
  maxConnections: 256,
  maxConcurrentReads: 16,
  maxQueuedPerConnection: 64,
  handshakeTimeoutMs: 10_000,
  maxOptionsPerConnection: 256,
};

const KEEPALIVE_IDLE_MS = 30_000;

/** Reply bytes buffered in user space for a slow reader before we stop reading for it. */
const WRITE_HIGH_WATER = 8 * 1024 * 1024;

interface OpenExport {
  name: string;
  file: FileHandle;
  size: number;
}

export class NbdServer {
  private readonly options: Required<Omit<NbdServerOptions, 'listExports' | 'onConnection' | 'onRead' | 'log'>> &
    Pick<NbdServerOptions, 'listExports' | 'onConnection' | 'onRead'>;
  private readonly log: Logger;
  private readonly readQueue: FairQueue<Connection>;
  private readonly pool = new BufferPool();
  private readonly connections = new Set<Connection>();
  private server: Server | null = null;
  private stopping = false;

  constructor(options: NbdServerOptions) {
    this.options = {
      ...DEFAULTS,
      ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
      lookupExport: options.lookupExport,
    } as NbdServer['options'];
    this.log = (options.log ?? silentLogger).child({ component: 'nbd' });
    this.readQueue = new FairQueue(this.options.maxConcurrentReads);
  }

  async start(listen: { host: string; port: number }): Promise<{ address: string; port: number }> {
    if (this.server) throw new Error('NBD server already started');
    this.stopping = false;
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    server.on('error', (err) => this.log.error({ err }, 'nbd listener error'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listen.port, listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const address = server.address() as AddressInfo;
    this.log.info({ address: address.address, port: address.port }, 'nbd server listening');
    return { address: address.address, port: address.port };
  }

  /** Stops listening and closes every connection. */
  async stop(): Promise<void> {
    this.stopping = true;
    const server = this.server;
    this.server = null;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    await Promise.all([...this.connections].map((c) => c.close('server-stop')));
    await closed;
  }

  /** Export name -> number of connections reading it now (e.g. so image GC can wait). */
  connectedExports(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const c of this.connections) {
      const name = c.exportName;
      if (name !== null) counts.set(name, (counts.get(name) ?? 0) + 1);
    }
    return counts;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  get readStats(): { active: number; queued: number } {
    return { active: this.readQueue.active, queued: this.readQueue.queued };
  }

  private accept(socket: Socket): void {
    const client = { address: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 };
    if (this.stopping || this.connections.size >= this.options.maxConnections) {
      socket.on('error', () => undefined);
      socket.destroy();
      this.log.warn({ client, limit: this.options.maxConnections }, 'nbd connection refused: too many connections');
      this.emitConnection({ event: 'refused', client, export: null, bytes: 0, requests: 0, reason: 'max-connections' });
      return;
    }
    const connection = new Connection(socket, client, this);
    this.connections.add(connection);
    connection.begin();
  }

  // ------------------------------------------------------------ used by Connection

  /** @internal */
  get config(): NbdServer['options'] {
    return this.options;
  }

  /** @internal */
  get logger(): Logger {
    return this.log;
  }

  /** @internal */
  get reads(): FairQueue<Connection> {
    return this.readQueue;
  }

  /** @internal */
  get buffers(): BufferPool {
    return this.pool;
  }

  /** @internal */
  forget(connection: Connection): void {
    this.connections.delete(connection);
  }

  /** @internal */
  emitConnection(event: NbdConnectionEvent): void {
    try {
      this.options.onConnection?.(event);
    } catch (err) {
      this.log.error({ err }, 'nbd onConnection callback threw');
    }
  }

  /** @internal */
  emitRead(event: NbdReadEvent): void {
    try {
      this.options.onRead?.(event);
    } catch (err) {
      this.log.error({ err }, 'nbd onRead callback threw');
    }
  }

  /** @internal Looks an export up and opens it; null if unknown or unopenable. */
  async openExport(name: string, keepOpen: boolean): Promise<{ size: number; file: FileHandle | null } | null> {
    let found: NbdExport | null;
    try {
      found = this.options.lookupExport(name);
    } catch (err) {
      this.log.error({ err, export: name }, 'nbd lookupExport threw');
      return null;
    }
    if (!found) return null;
    try {
      if (!keepOpen) {
        const st = await stat(found.path);
        return st.isFile() ? { size: st.size, file: null } : null;
      }
      const file = await open(found.path, 'r');
      const st = await file.stat();
      if (!st.isFile()) {
        await file.close();
        return null;
      }
      return { size: st.size, file };
    } catch (err) {
      this.log.warn({ err, export: name, path: found.path }, 'nbd export could not be opened');
      return null;
    }
  }
}

type Request = Extract<ClientMessage, { kind: 'request' }>;

class Connection {
  private readonly parser = new ClientStreamParser();
  private readonly log: Logger;
  private clientFlags = 0;
  private exp: OpenExport | null = null;
  private busy = false;
  private closed = false;
  private disconnectRequested = false;
  private inFlight = 0;
  private options = 0;
  private bytes = 0;
  private requests = 0;
  private pausedForBackpressure = false;
  private handshakeTimer: NodeJS.Timeout | null = null;
  private closeReason = 'client-closed';
  private closing: Promise<void> | null = null;
  /** Reads put back while the client was not taking its replies; queued again on 'drain'. */
  private deferred: Task[] = [];

  constructor(
    private readonly socket: Socket,
    private readonly client: NbdClientAddress,
    private readonly server: NbdServer,
  ) {
    this.log = server.logger.child({ client: `${client.address}:${client.port}` });
  }

  get exportName(): string | null {
    return this.exp?.name ?? null;
  }

  begin(): void {
    const { socket } = this;
    socket.setNoDelay(true);
    // Diskless machines get powered off without NBD_CMD_DISC: keepalive lets their connections
    // (and the slots and file descriptors they hold) go away instead of lingering forever.
    socket.setKeepAlive(true, KEEPALIVE_IDLE_MS);
    socket.on('data', (chunk: Buffer) => {
      this.parser.push(chunk);
      this.pump();
    });
    socket.on('error', (err) => {
      this.log.debug({ err }, 'nbd socket error');
      this.closeReason = 'socket-error';
    });
    socket.on('close', () => void this.close(this.closeReason));
    socket.on('drain', () => {
      for (const task of this.deferred.splice(0)) this.server.reads.enqueue(this, task);
      this.updateBackpressure();
    });
    this.handshakeTimer = setTimeout(() => {
      this.log.warn('nbd handshake timeout');
      void this.close('handshake-timeout');
    }, this.server.config.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.write(encodeServerGreeting());
  }

  /** Ends the connection (idempotent): drops its queued reads, closes the socket and the file. */
  close(reason: string): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.server.reads.drop(this);
    this.socket.destroy();
    this.server.forget(this);
    this.log.debug({ reason, export: this.exp?.name, bytes: this.bytes, requests: this.requests }, 'nbd connection closed');
    this.server.emitConnection({
      event: 'close',
      client: this.client,
      export: this.exp?.name ?? null,
      bytes: this.bytes,
      requests: this.requests,
      reason,
    });
    const file = this.exp?.file;
    this.closing = file ? file.close().catch(() => undefined) : Promise.resolve();
    return this.closing;
  }

  private send(bytes: Buffer): void {
    if (this.closed) return;
    this.socket.write(bytes);
    this.updateBackpressure();
  }

  /** Stops reading the socket while this client has too much waiting, or too much unread reply data. */
  private updateBackpressure(): void {
    if (this.closed || this.disconnectRequested) return;
    const tooMuch =
      this.server.reads.queuedFor(this) >= this.server.config.maxQueuedPerConnection || this.socket.writableLength >= WRITE_HIGH_WATER;
    if (tooMuch && !this.pausedForBackpressure) {
      this.pausedForBackpressure = true;
      this.socket.pause();
    } else if (!tooMuch && this.pausedForBackpressure) {
      this.pausedForBackpressure = false;
      this.socket.resume();
      this.pump();
    }
  }

  private pump(): void {
    while (!this.busy && !this.closed && !this.disconnectRequested && !this.pausedForBackpressure) {
      let message: ClientMessage | null;
      try {
        message = this.parser.next();
      } catch (err) {
        if (!(err instanceof NbdProtocolError)) throw err;
        this.log.warn({ code: err.code, err: err.message }, 'nbd protocol error, disconnecting');
        void this.close(`protocol-error:${err.code}`);
        return;
      }
      if (message === null) return;
      switch (message.kind) {
        case 'clientFlags':
          this.clientFlags = message.flags;
          break;
        case 'option':
          this.busy = true;
          this.handleOption(message.option, message.data)
            .catch((err: unknown) => {
              this.log.error({ err }, 'nbd option handling failed');
              void this.close('server-error');
            })
            .finally(() => {
              this.busy = false;
              this.pump();
            });
          return;
        case 'request':
          this.handleRequest(message);
          break;
      }
    }
  }

  private async handleOption(option: number, data: Buffer): Promise<void> {
    if (++this.options > this.server.config.maxOptionsPerConnection) {
      this.log.warn({ options: this.options }, 'nbd too many options, disconnecting');
      await this.close('too-many-options');
      return;
    }
    switch (option) {
      case Opt.EXPORT_NAME: {
        // No way to report an error here: the spec says terminate the session.
        const name = decodeExportName(data);
        const opened = name === null ? null : await this.server.openExport(name, true);
        if (name === null || !opened || !opened.file) {
          this.log.warn({ export: name }, 'nbd unknown export (EXPORT_NAME), disconnecting');
          await this.close('unknown-export');
          return;
        }
        if (!this.adopt(name, opened.file, opened.size)) return;
        this.send(encodeExportNameReply(opened.size, EXPORT_TRANSMISSION_FLAGS, (this.clientFlags & FLAG_NO_ZEROES) !== 0));
        this.enterTransmission();
        return;
      }
      case Opt.ABORT:
        this.send(encodeOptionReply(option, Rep.ACK));
        this.closeReason = 'abort';
        this.socket.end();
        this.disconnectRequested = true;
        return;
      case Opt.LIST: {
        if (data.length !== 0) {
          this.send(encodeOptionError(option, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data'));
          return;
        }
        let names: string[] = [];
        try {
          names = this.server.config.listExports?.() ?? [];
        } catch (err) {
          this.log.error({ err }, 'nbd listExports threw');
        }
        this.send(Buffer.concat([...names.map((n) => encodeServerEntry(n)), encodeOptionReply(option, Rep.ACK)]));
        return;
      }
      case Opt.INFO:
      case Opt.GO: {
        const request = decodeInfoRequest(data);
        if (!request) {
          this.send(encodeOptionError(option, Rep.ERR_INVALID, 'malformed info request'));
          return;
        }
        const go = option === Opt.GO;
        const opened = await this.server.openExport(request.name, go);
        if (this.closed) {
          await opened?.file?.close();
          return;
        }
        if (!opened) {
          this.log.info({ export: request.name }, 'nbd unknown export');
          this.send(encodeOptionError(option, Rep.ERR_UNKNOWN, `unknown export: ${request.name}`));
          return;
        }
        const reply = encodeInfoSuccess(option, { name: request.name, size: opened.size, transmissionFlags: EXPORT_TRANSMISSION_FLAGS }, request.infos);
        if (!go) {
          this.send(reply);
          return;
        }
        if (!this.adopt(request.name, opened.file!, opened.size)) return;
        this.send(reply);
        this.enterTransmission();
        return;
      }
      default:
        // Includes STARTTLS (we run NOTLS) and STRUCTURED_REPLY (simple replies only).
        this.send(encodeOptionError(option, Rep.ERR_UNSUP));
        return;
    }
  }

  /** Takes ownership of the opened file; false (and the file closed) if the connection already went away. */
  private adopt(name: string, file: FileHandle, size: number): boolean {
    if (this.closed) {
      void file.close().catch(() => undefined);
      return false;
    }
    this.exp = { name, file, size };
    return true;
  }

  private enterTransmission(): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.parser.enterTransmission();
    this.log.info({ export: this.exp?.name, size: this.exp?.size }, 'nbd client connected to export');
    this.server.emitConnection({ event: 'open', client: this.client, export: this.exp!.name, bytes: 0, requests: 0 });
  }

  private handleRequest(request: Request): void {
    this.log.trace({ type: request.type, flags: request.flags, offset: request.offset.toString(), length: request.length }, 'nbd request');
    switch (request.type) {
      case Cmd.READ:
        this.handleRead(request);
        return;
      case Cmd.DISC:
        this.disconnectRequested = true;
        this.closeReason = 'client-disc';
        this.finishIfDisconnecting();
        return;
      case Cmd.WRITE:
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES:
        this.send(encodeSimpleReply(Errno.EPERM, request.handle));
        return;
      case Cmd.FLUSH:
        // Nothing is ever written, so everything is always flushed.
        this.send(encodeSimpleReply(0, request.handle));
        return;
      default:
        this.send(encodeSimpleReply(Errno.EINVAL, request.handle));
        return;
    }
  }

  private handleRead(request: Request): void {
    const exp = this.exp!;
    const { handle, length } = request;
    if (length > BLOCK_SIZE.maximum || request.offset + BigInt(length) > BigInt(exp.size)) {
      this.send(encodeSimpleReply(Errno.EINVAL, handle));
      return;
    }
    const offset = Number(request.offset);
    const parsedAt = performance.now();
    this.inFlight++;
    const task = async (): Promise<void> => {
      if (this.closed) return this.readDone();
      if (this.socket.writableLength >= WRITE_HIGH_WATER) {
        // The client is not taking its replies: give the slot back and queue again once it does,
        // so unread replies cannot pile up in memory and a stalled client cannot hold slots.
        this.deferred.push(task);
        return;
      }
      const startedAt = performance.now();
      try {
        const buffer = this.server.buffers.acquire(SIMPLE_REPLY_HEADER_LENGTH + length);
        const reply = buffer.subarray(0, SIMPLE_REPLY_HEADER_LENGTH + length);
        let error = 0;
        try {
          await readFully(exp.file, reply, SIMPLE_REPLY_HEADER_LENGTH, length, offset);
        } catch (err) {
          if (!this.closed) this.log.error({ err, offset, length }, 'nbd read failed');
          error = Errno.EIO;
        }
        if (this.closed) {
          this.server.buffers.release(buffer);
          return;
        }
        writeSimpleReplyHeader(reply, 0, error, handle);
        // The buffer goes back to the pool once the socket has handed it to the kernel.
        this.socket.write(error === 0 ? reply : reply.subarray(0, SIMPLE_REPLY_HEADER_LENGTH), () => this.server.buffers.release(buffer));
        if (error !== 0) return;
        this.bytes += length;
        this.requests++;
        const now = performance.now();
        this.server.emitRead({
          client: this.client,
          export: exp.name,
          offset,
          length,
          bytes: this.bytes,
          requests: this.requests,
          latencyMs: now - parsedAt,
          queuedMs: startedAt - parsedAt,
        });
      } finally {
        this.readDone();
      }
    };
    this.server.reads.enqueue(this, task);
    this.updateBackpressure();
  }

  private readDone(): void {
    this.inFlight--;
    this.updateBackpressure();
    this.finishIfDisconnecting();
  }

  /** After NBD_CMD_DISC: answer what is in flight, then close. */
  private finishIfDisconnecting(): void {
    if (!this.disconnectRequested || this.inFlight > 0 || this.closed) return;
    this.socket.end(() => void this.close('client-disc'));
  }
}

/** pread until `length` bytes are in; a short file (truncated under us) is an error. */
async function readFully(file: FileHandle, buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await file.read(buffer, offset + done, length - done, position + done);
    if (bytesRead === 0) throw new Error(`unexpected end of file at ${position + done}`);
    done += bytesRead;
  }
}
