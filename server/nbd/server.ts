/**
 * The NBD server loop: a TCP listener; per connection the fixed newstyle handshake, then
 * read requests answered from a file descriptor opened when the export was chosen (so an
 * export whose file is replaced or deleted keeps being served to the clients that have it).
 * Reads of all connections share one fair queue with a global concurrency cap.
 * Nothing a client sends can throw out of a connection: protocol errors end that connection.
 */
import { stat } from 'node:fs/promises';
import { servedFiles, type OpenFile } from '../fs/open-file-cache.ts';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { readCached } from '../fs/cached-read.ts';
import { silentLogger, type Logger } from '../log.ts';
import { Errno, SIMPLE_REPLY_HEADER_LENGTH, writeSimpleReplyHeader } from './codec.ts';
import { BufferPool } from './buffer-pool.ts';
import { FairQueue } from './fair-queue.ts';
import { AddressCounter } from './address-counter.ts';
import { defaultSessionLimits, NbdSession, type ReadAction, type SessionAction } from './session.ts';

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
   * refused: over `maxConnections` or `maxConnectionsPerAddress`, closed right after accept. */
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

/** A client went over its limits (reply bytes held, requests waiting): its socket is not read for now. */
export interface NbdThrottleEvent {
  client: NbdClientAddress;
  export: string | null;
  heldBytes: number;
  pendingReads: number;
}

export interface NbdServerOptions {
  /** Export name -> file, or null for an unknown export. Called at each INFO/GO/EXPORT_NAME. */
  lookupExport: (name: string) => NbdExport | null | Promise<NbdExport | null>;
  /** Names for NBD_OPT_LIST; without it the list is empty. */
  listExports?: () => string[];
  /** Connections over this are closed right after accept (config.server.nbd.maxConnections). */
  maxConnections?: number;
  /** Connections from one IP address over this are closed right after accept (config.server.nbd.maxConnectionsPerAddress). */
  maxConnectionsPerAddress?: number;
  /**
   * Reply bytes one connection may make the server hold (reads in progress + replies the client has not taken);
   * one read may always run alone, so the default (32 MiB + a reply header) lets a maximum-size read through.
   */
  maxHeldBytesPerConnection?: number;
  /** A connection with replies waiting and none of their bytes taken for this long is closed (the client stopped reading). */
  stallTimeoutMs?: number;
  /** Reads running at once across all connections; the rest wait in a fair queue. */
  maxConcurrentReads?: number;
  /** Read requests a connection may have waiting (and running) before we stop reading its socket. */
  maxQueuedPerConnection?: number;
  /** A client that has not chosen an export by then is disconnected. */
  handshakeTimeoutMs?: number;
  /** Option requests allowed per connection before we consider it abuse and disconnect. */
  maxOptionsPerConnection?: number;
  /** Copy what the page cache holds synchronously (see readCached); false: every read goes through the thread pool. */
  cachedReads?: boolean;
  log?: Logger;
  onConnection?: (event: NbdConnectionEvent) => void;
  onRead?: (event: NbdReadEvent) => void;
  onThrottle?: (event: NbdThrottleEvent) => void;
}

const DEFAULTS = {
  maxConnections: 256,
  maxConnectionsPerAddress: 8,
  maxConcurrentReads: 16,
  maxQueuedPerConnection: defaultSessionLimits.maxPendingReads,
  maxHeldBytesPerConnection: defaultSessionLimits.maxHeldBytes,
  handshakeTimeoutMs: defaultSessionLimits.handshakeTimeoutMs,
  stallTimeoutMs: defaultSessionLimits.stallTimeoutMs,
  maxOptionsPerConnection: defaultSessionLimits.maxOptions,
  cachedReads: true,
};

const KEEPALIVE_IDLE_MS = 30_000;

interface OpenExport {
  name: string;
  file: OpenFile;
  size: number;
}

export class NbdServer {
  private readonly options: Required<Omit<NbdServerOptions, 'listExports' | 'onConnection' | 'onRead' | 'onThrottle' | 'log'>> &
    Pick<NbdServerOptions, 'listExports' | 'onConnection' | 'onRead' | 'onThrottle'>;
  private readonly log: Logger;
  private readonly readQueue: FairQueue<Connection>;
  private readonly pool = new BufferPool();
  private readonly connections = new Set<Connection>();
  private readonly perAddress = new AddressCounter();
  private peakHeld = 0;
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
    // allowHalfOpen: a client that half-closes still gets the answers to what it sent (the session ends after them).
    const server = createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.accept(socket));
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

  /**
   * Reply bytes the server holds for its clients: now (all connections), and the most any one connection
   * ever held (open or closed). Each connection's share is bounded by maxHeldBytesPerConnection.
   */
  get heldBytes(): { now: number; peakPerConnection: number } {
    let now = 0;
    for (const c of this.connections) {
      now += c.heldBytes;
      this.peakHeld = Math.max(this.peakHeld, c.peakHeldBytes);
    }
    return { now, peakPerConnection: this.peakHeld };
  }

  /** Open connections from one IP address. */
  connectionsFrom(address: string): number {
    return this.perAddress.count(address);
  }

  private accept(socket: Socket): void {
    const client = { address: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 };
    const refuse = (reason: string, limit: number, message: string) => {
      socket.on('error', () => undefined);
      socket.destroy();
      this.log.warn({ client, limit }, message);
      this.emitConnection({ event: 'refused', client, export: null, bytes: 0, requests: 0, reason });
    };
    if (this.stopping || this.connections.size >= this.options.maxConnections) {
      return refuse('max-connections', this.options.maxConnections, 'nbd connection refused: too many connections');
    }
    if (this.perAddress.count(client.address) >= this.options.maxConnectionsPerAddress) {
      return refuse('max-connections-per-address', this.options.maxConnectionsPerAddress, 'nbd connection refused: too many connections from this address');
    }
    const connection = new Connection(socket, client, this);
    this.connections.add(connection);
    this.perAddress.add(client.address);
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
    if (!this.connections.delete(connection)) return;
    this.perAddress.remove(connection.client.address);
    this.peakHeld = Math.max(this.peakHeld, connection.peakHeldBytes);
  }

  /** @internal */
  emitThrottle(event: NbdThrottleEvent): void {
    try {
      this.options.onThrottle?.(event);
    } catch (err) {
      this.log.error({ err }, 'nbd onThrottle callback threw');
    }
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
  async openExport(name: string, keepOpen: boolean): Promise<{ size: number; file: OpenFile | null } | null> {
    let found: NbdExport | null;
    try {
      found = await this.options.lookupExport(name);
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
      const file = servedFiles.acquire(found.path);
      return file ? { size: file.stat.size, file } : null;
    } catch (err) {
      this.log.warn({ err, export: name, path: found.path }, 'nbd export could not be opened');
      return null;
    }
  }
}

/**
 * Drives one NbdSession over a socket: feeds it what arrives, carries out its actions (writes,
 * export lookups, reads through the shared fair queue) and reports back when they are done.
 */
class Connection {
  private readonly session: NbdSession;
  private readonly log: Logger;
  private exp: OpenExport | null = null;
  private bytes = 0;
  private requests = 0;
  private paused = false;
  private timer: NodeJS.Timeout | null = null;
  private timerAt: number | null = null;
  private closeReason = 'client-closed';
  private closing: Promise<void> | null = null;

  constructor(
    private readonly socket: Socket,
    readonly client: NbdClientAddress,
    private readonly server: NbdServer,
  ) {
    this.log = server.logger.child({ client: `${client.address}:${client.port}` });
    const c = server.config;
    this.session = new NbdSession({
      maxHeldBytes: c.maxHeldBytesPerConnection,
      maxPendingReads: c.maxQueuedPerConnection,
      handshakeTimeoutMs: c.handshakeTimeoutMs,
      stallTimeoutMs: c.stallTimeoutMs,
      maxOptions: c.maxOptionsPerConnection,
    });
  }

  get exportName(): string | null {
    return this.exp?.name ?? null;
  }

  get heldBytes(): number {
    return this.session.heldBytes;
  }

  get peakHeldBytes(): number {
    return this.session.peakHeldBytes;
  }

  begin(): void {
    const { socket } = this;
    socket.setNoDelay(true);
    // Diskless machines get powered off without NBD_CMD_DISC: keepalive lets their connections
    // (and the slots and file descriptors they hold) go away instead of lingering forever.
    socket.setKeepAlive(true, KEEPALIVE_IDLE_MS);
    socket.on('data', (chunk: Buffer) => this.apply(this.session.receive(chunk)));
    socket.on('error', (err) => {
      this.log.debug({ err }, 'nbd socket error');
      this.closeReason = 'socket-error';
    });
    socket.on('end', () => this.apply(this.session.endOfInput()));
    socket.on('close', () => void this.close(this.closeReason));
    this.apply(this.session.start());
  }

  /** Ends the connection (idempotent): drops its queued reads, closes the socket and the file. */
  close(reason: string): Promise<void> {
    if (this.closing) return this.closing;
    this.session.close(reason);
    if (this.timer) clearTimeout(this.timer);
    this.server.reads.drop(this);
    this.socket.destroy();
    this.server.forget(this);
    const level = reason === 'handshake-timeout' || reason === 'write-stalled' || reason.startsWith('protocol-error') ? 'warn' : 'debug';
    this.log[level]({ reason, export: this.exp?.name, bytes: this.bytes, requests: this.requests }, 'nbd connection closed');
    this.server.emitConnection({
      event: 'close',
      client: this.client,
      export: this.exp?.name ?? null,
      bytes: this.bytes,
      requests: this.requests,
      reason,
    });
    this.exp?.file.release();
    this.closing = Promise.resolve();
    return this.closing;
  }

  private apply(actions: SessionAction[]): void {
    for (const action of actions) {
      switch (action.kind) {
        case 'send':
          this.write(action.bytes);
          break;
        case 'lookup':
          void this.lookup(action.name, action.open);
          break;
        case 'list': {
          let names: string[] = [];
          try {
            names = this.server.config.listExports?.() ?? [];
          } catch (err) {
            this.log.error({ err }, 'nbd listExports threw');
          }
          this.apply(this.session.listResult(names));
          break;
        }
        case 'transmission':
          this.log.info({ export: action.name, size: action.size }, 'nbd client connected to export');
          this.server.emitConnection({ event: 'open', client: this.client, export: action.name, bytes: 0, requests: 0 });
          break;
        case 'read':
          this.server.reads.enqueue(this, () => this.read(action));
          break;
        case 'throttled':
          this.log.debug({ heldBytes: action.heldBytes, pendingReads: action.pendingReads }, 'nbd client over its limits: not reading its requests for now');
          this.server.emitThrottle({ client: this.client, export: this.exp?.name ?? null, heldBytes: action.heldBytes, pendingReads: action.pendingReads });
          break;
        case 'end':
          this.closeReason = action.reason;
          this.socket.end(() => void this.close(action.reason));
          break;
        case 'close':
          if (action.reason === 'handshake-timeout') this.log.warn('nbd handshake timeout');
          else if (action.reason === 'write-stalled') this.log.warn({ heldBytes: this.session.heldBytes }, 'nbd client stopped reading its replies, disconnecting');
          else if (action.reason.startsWith('protocol-error')) this.log.warn({ reason: action.reason }, 'nbd protocol error, disconnecting');
          else if (action.reason === 'too-many-options') this.log.warn('nbd too many options, disconnecting');
          else if (action.reason === 'unknown-export') this.log.warn('nbd unknown export (EXPORT_NAME), disconnecting');
          void this.close(action.reason);
          break;
      }
    }
    this.updateFlow();
  }

  /** Pauses or resumes the socket as the session wants, and arms its timer. */
  private updateFlow(): void {
    if (this.closing) return;
    const want = this.session.wantsInput;
    if (!want && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (want && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    const deadline = this.session.deadline;
    if (deadline === this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = deadline;
    if (deadline === null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.timerAt = null;
      this.apply(this.session.timer());
    }, Math.max(0, deadline - performance.now()));
    this.timer.unref();
  }

  /** Writes session bytes; the session learns when the kernel took them. */
  private write(bytes: Buffer): void {
    if (this.closing) return;
    this.socket.write(bytes, () => {
      if (!this.closing) this.apply(this.session.flushed(bytes.length));
    });
  }

  private async lookup(name: string, open: boolean): Promise<void> {
    let opened: { size: number; file: OpenFile | null } | null = null;
    try {
      opened = await this.server.openExport(name, open);
    } catch (err) {
      this.log.error({ err, export: name }, 'nbd export lookup failed');
    }
    if (!opened) this.log.info({ export: name }, 'nbd unknown export');
    if (this.closing) {
      opened?.file?.release();
      return;
    }
    const actions = this.session.exportResult(opened);
    if (opened?.file) {
      if (actions.some((a) => a.kind === 'transmission')) this.exp = { name, file: opened.file, size: opened.size };
      else opened.file.release();
    }
    this.apply(actions);
  }

  private async read(action: ReadAction): Promise<void> {
    const exp = this.exp;
    let sent = 0;
    try {
      if (this.closing || !exp) return;
      const { handle, length, offset } = action;
      const startedAt = performance.now();
      const buffer = this.server.buffers.acquire(SIMPLE_REPLY_HEADER_LENGTH + length);
      const reply = buffer.subarray(0, SIMPLE_REPLY_HEADER_LENGTH + length);
      let error = 0;
      try {
        // Pages every machine reads are in the page cache: copied now, without a trip through the thread pool.
        const cached = this.server.config.cachedReads ? readCached(exp.file.fd, reply, SIMPLE_REPLY_HEADER_LENGTH, length, offset) : 0;
        if (cached < length) await readFully(exp.file, reply, SIMPLE_REPLY_HEADER_LENGTH + cached, length - cached, offset + cached);
      } catch (err) {
        if (!this.closing) this.log.error({ err, offset, length }, 'nbd read failed');
        error = Errno.EIO;
      }
      if (this.closing) {
        this.server.buffers.release(buffer);
        return;
      }
      writeSimpleReplyHeader(reply, 0, error, handle);
      const out = error === 0 ? reply : reply.subarray(0, SIMPLE_REPLY_HEADER_LENGTH);
      sent = out.length;
      // The buffer goes back to the pool once the socket has handed it to the kernel.
      this.socket.write(out, () => {
        this.server.buffers.release(buffer);
        if (!this.closing) this.apply(this.session.flushed(out.length));
      });
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
        latencyMs: now - action.parsedAt,
        queuedMs: startedAt - action.parsedAt,
      });
    } finally {
      this.apply(this.session.readDone(action, sent));
    }
  }
}

/** pread until `length` bytes are in; a short file (truncated under us) is an error. */
async function readFully(file: OpenFile, buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
  const got = await file.read(buffer, offset, length, position);
  if (got < length) throw new Error(`unexpected end of file at ${position + got}`);
}
