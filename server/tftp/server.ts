/**
 * The TFTP server loop: one socket on the configured address/port takes requests; each
 * accepted RRQ gets its own ephemeral port (its transfer ID) driven by a ReadSession.
 * Read-only: WRQ is refused. Malformed packets are dropped; nothing a client sends can throw
 * out of the loop.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { silentLogger, type Logger } from '../log.ts';
import { BURST_RECEIVE_BYTES, warnIfReceiveBufferCapped } from '../udp-receive-buffer.ts';
import { ErrorCode, errorPacket, parsePacket, type RequestPacket } from './codec.ts';
import { normaliseTftpPath, type TftpClient, type TftpFile, type TftpFileSource } from './files.ts';
import { defaultSessionLimits, ReadSession, type DataBlock, type SessionAction, type SessionLimits, type TransferOutcome } from './session.ts';

/** RRQs that may wait for a transfer slot while the server is at maxTransfers; more are refused. */
export const MAX_WAITING_REQUESTS = 4096;
/**
 * A waiting RRQ older than this is dropped when its turn comes: its client has given up on it
 * (EDK2 tries 6 times, 4 s apart), and if it is still there its next retransmission waits anew.
 */
export const MAX_WAIT_MS = 20_000;

export interface TransferEvent {
  client: TftpClient;
  /** The normalised path, or the raw requested name when it was refused before normalising. */
  path: string;
  /** File bytes acknowledged by the client. */
  bytes: number;
  durationMs: number;
  /** 'refused': not found, access violation, bad mode or over the transfer limit (see `detail`). */
  outcome: TransferOutcome | 'refused';
  blksize?: number;
  windowsize?: number;
  detail?: string;
}

export interface TftpServerOptions {
  /** Address to bind: loopback or a namespace address in tests, the configured one in production. */
  host: string;
  /** 69 in production; 0 picks a free port (see `start()`'s result). */
  port: number;
  source: TftpFileSource;
  /** Concurrent transfers; requests over it get an ERROR naming the limit. */
  maxTransfers?: number;
  /**
   * Concurrent transfers from one IP address (any source port). Without it one host sending RRQs it never
   * acknowledges from many ports holds every slot for the whole retry period and locks every other machine out.
   */
  maxTransfersPerAddress?: number;
  /** RRQs that may wait for a slot while maxTransfers are running (default MAX_WAITING_REQUESTS); more get an ERROR. */
  maxWaiting?: number;
  limits?: Partial<SessionLimits>;
  log?: Logger;
  onTransfer?: (event: TransferEvent) => void;
}

const READ_CHUNK = 256 * 1024;
/** Files up to this size are kept whole while transfers of them run, shared by those transfers. */
export const SHARED_FILE_MAX_BYTES = 8 << 20;

interface ChunkStore {
  chunks: Map<number, Promise<Buffer>>;
  loaded: Map<number, Buffer>;
  refs: number;
}

/**
 * Chunks of file versions being sent, shared by every transfer of that version and chunk size:
 * memory is one copy of the file per version in flight, not one chunk pair per transfer (a
 * storm of 500 machines fetching one iPXE binary held 500 x 512 KiB before). Dropped when the
 * last transfer of the version ends.
 */
export class SharedChunks {
  readonly #stores = new Map<string, ChunkStore>();

  acquire(key: string): ChunkStore {
    let store = this.#stores.get(key);
    if (!store) {
      store = { chunks: new Map(), loaded: new Map(), refs: 0 };
      this.#stores.set(key, store);
    }
    store.refs++;
    return store;
  }

  release(key: string): void {
    const store = this.#stores.get(key);
    if (store && --store.refs <= 0) this.#stores.delete(key);
  }

  /** Versions held now (tests). */
  get size(): number {
    return this.#stores.size;
  }
}

const sharedChunks = new SharedChunks();

/** Reads a file in chunks aligned to the block size, one chunk ahead, so DATA goes out without
 * waiting on a disk read per block. Small files with a version share their chunks (SharedChunks). */
export class ChunkReader {
  private readonly chunkSize: number;
  private readonly chunks: Map<number, Promise<Buffer>>;
  private readonly loaded: Map<number, Buffer>;
  private readonly sharedKey: string | null;
  private disposed = false;

  constructor(
    private readonly file: TftpFile,
    blksize: number,
    private readonly shared: SharedChunks = sharedChunks,
  ) {
    this.chunkSize = blksize * Math.max(1, Math.ceil(READ_CHUNK / blksize));
    this.sharedKey = file.version !== undefined && file.size <= SHARED_FILE_MAX_BYTES ? `${file.version}:${this.chunkSize}` : null;
    const store = this.sharedKey === null ? { chunks: new Map(), loaded: new Map(), refs: 1 } : shared.acquire(this.sharedKey);
    this.chunks = store.chunks;
    this.loaded = store.loaded;
  }

  /** The transfer ended: its share of a shared file is given back. Idempotent. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.sharedKey !== null) this.shared.release(this.sharedKey);
  }

  /** The payloads of `blocks` if every one is already in memory (the common case), else null. */
  blocksNow(blocks: DataBlock[]): Buffer[] | null {
    const out: Buffer[] = [];
    for (const block of blocks) {
      if (block.length === 0) {
        out.push(Buffer.alloc(0));
        continue;
      }
      const index = Math.floor(block.offset / this.chunkSize);
      const chunk = this.loaded.get(index);
      if (chunk === undefined) return null;
      const start = block.offset - index * this.chunkSize;
      out.push(chunk.subarray(start, start + block.length));
      if (!this.chunks.has(index + 1) && (index + 1) * this.chunkSize < this.file.size) {
        void this.chunk(index + 1).catch(() => undefined);
        this.evictBefore(index - 1);
      }
    }
    return out;
  }

  /** Keeps the chunk before the current one (a partial ACK may step back into it), drops older; shared files stay whole. */
  private evictBefore(index: number): void {
    if (this.sharedKey !== null) return;
    for (const key of this.chunks.keys()) {
      if (key < index) {
        this.chunks.delete(key);
        this.loaded.delete(key);
      }
    }
  }

  async block(block: DataBlock): Promise<Buffer> {
    if (block.length === 0) return Buffer.alloc(0);
    const index = Math.floor(block.offset / this.chunkSize);
    const chunk = await this.chunk(index);
    if ((index + 1) * this.chunkSize < this.file.size) void this.chunk(index + 1).catch(() => undefined);
    this.evictBefore(index - 1);
    const start = block.offset - index * this.chunkSize;
    return chunk.subarray(start, start + block.length);
  }

  private chunk(index: number): Promise<Buffer> {
    let pending = this.chunks.get(index);
    if (pending === undefined) {
      pending = this.file.read(index * this.chunkSize, this.chunkSize);
      this.chunks.set(index, pending);
      pending.then(
        (data) => {
          if (this.chunks.get(index) === pending) this.loaded.set(index, data);
        },
        () => this.chunks.delete(index),
      );
    }
    return pending;
  }
}

function bindSocket(socket: Socket, address: string, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ address, port }, () => {
      socket.off('error', reject);
      resolve();
    });
  });
}

/**
 * A transfer's ID is one local port, served by two sockets sharing it (SO_REUSEADDR):
 * `peer` is connected to the client, so sends skip the per-packet address handling (about a
 * quarter less CPU per DATA packet), and the kernel delivers the client's packets to it
 * first; `strangers` is unconnected and so receives only packets from any other address/port,
 * which get ERROR 5.
 */
export async function openTransferSockets(host: string, client: TftpClient): Promise<{ peer: Socket; strangers: Socket }> {
  const type = isIPv6(host) ? 'udp6' : 'udp4';
  const strangers = createSocket({ type, reuseAddr: true });
  const peer = createSocket({ type, reuseAddr: true });
  try {
    await bindSocket(strangers, host, 0);
    await bindSocket(peer, host, strangers.address().port);
    await new Promise<void>((resolve, reject) => {
      peer.once('error', reject);
      peer.connect(client.port, client.address, () => {
        peer.off('error', reject);
        resolve();
      });
    });
    return { peer, strangers };
  } catch (err) {
    for (const socket of [peer, strangers]) {
      try {
        socket.close();
      } catch {
        /* never bound */
      }
    }
    throw err;
  }
}

const dataHeader = (wire: number): Buffer => {
  const header = Buffer.allocUnsafe(4);
  header.writeUInt16BE(3, 0);
  header.writeUInt16BE(wire, 2);
  return header;
};

class Transfer {
  private timer: NodeJS.Timeout | undefined;
  private timerMs = 0;
  private queue: Promise<void> = Promise.resolve();
  private queued = 0;
  private readonly reader: ChunkReader;
  private readonly startedAt = Date.now();
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    private readonly socket: Socket,
    private readonly strangers: Socket,
    readonly client: TftpClient,
    readonly path: string,
    private readonly file: TftpFile,
    private readonly session: ReadSession,
    private readonly log: Logger,
    private readonly onEnd: (event: TransferEvent) => void,
  ) {
    this.reader = new ChunkReader(file, session.negotiated.blksize);
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    strangers.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // ECONNREFUSED on the connected socket: an ICMP port unreachable, the client has gone
      // (typically it exited after the last DATA and its final ACK was lost).
      if (err.code === 'ECONNREFUSED') {
        this.apply(this.session.receive({ op: 'ERROR', code: ErrorCode.NotDefined, message: 'client port unreachable' }));
        return;
      }
      this.log.warn({ err }, 'tftp transfer socket error');
      this.apply(this.session.abort(ErrorCode.NotDefined, 'server socket error'));
    });
    strangers.on('error', (err) => this.log.debug({ err }, 'tftp stranger socket error'));
  }

  begin(): void {
    this.apply(this.session.start());
  }

  abort(message: string): void {
    this.apply(this.session.abort(ErrorCode.NotDefined, message));
  }

  private onMessage(msg: Buffer, rinfo: RemoteInfo): void {
    if (rinfo.address !== this.client.address || rinfo.port !== this.client.port) {
      // RFC 1350: a packet from a stranger's transfer ID gets ERROR 5, the transfer goes on.
      this.log.debug({ stranger: { address: rinfo.address, port: rinfo.port } }, 'tftp packet from unknown transfer ID');
      this.strangers.send(errorPacket(ErrorCode.UnknownTransferId, 'Unknown transfer ID'), rinfo.port, rinfo.address, () => undefined);
      return;
    }
    const parsed = parsePacket(msg);
    if (!parsed.ok) {
      this.log.debug({ error: parsed.error }, 'tftp malformed packet from client ignored');
      return;
    }
    this.apply(this.session.receive(parsed.packet));
  }

  private apply(actions: SessionAction[]): void {
    for (const action of actions) {
      switch (action.kind) {
        case 'send':
          this.enqueue(() => this.send([action.packet]));
          break;
        case 'send-data': {
          // Fast path: nothing queued and the bytes are in memory -> send right now, no promises.
          const payloads = this.queued === 0 ? this.reader.blocksNow(action.blocks) : null;
          if (payloads) this.sendData(action.blocks, payloads);
          else this.enqueue(() => this.sendBlocks(action.blocks));
          break;
        }
        case 'arm-timer':
          // Re-arming happens on every ACK: reuse the timer object when the delay is unchanged.
          if (this.timer !== undefined && this.timerMs === action.ms) this.timer.refresh();
          else {
            clearTimeout(this.timer);
            this.timerMs = action.ms;
            this.timer = setTimeout(() => this.apply(this.session.timeout()), action.ms);
          }
          break;
        case 'finish':
          this.finish(action.outcome, action.detail);
          break;
      }
    }
  }

  private enqueue(step: () => Promise<void>): void {
    this.queued++;
    this.queue = this.queue
      .then(step)
      .catch((err: unknown) => {
        if (this.session.finished) return;
        this.log.error({ err }, 'tftp read failed');
        this.apply(this.session.abort(ErrorCode.NotDefined, 'read error'));
      })
      .finally(() => this.queued--);
  }

  private async sendBlocks(blocks: DataBlock[]): Promise<void> {
    const payloads = await Promise.all(blocks.map((b) => this.reader.block(b)));
    if (this.session.finished) return;
    this.sendData(blocks, payloads);
  }

  private sendData(blocks: DataBlock[], payloads: Buffer[]): void {
    // Not awaited one by one: the kernel queues the whole window at once. A send error
    // surfaces as the socket's 'error' event.
    for (let i = 0; i < blocks.length; i++) {
      try {
        this.socket.send([dataHeader(blocks[i]!.wire), payloads[i]!]);
      } catch {
        return; // socket closed under us: the transfer is ending
      }
    }
  }

  private send(parts: Buffer[]): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.socket.send(parts, () => resolve());
      } catch {
        resolve(); // socket already closed
      }
    });
  }

  private finish(outcome: TransferOutcome, detail: string | undefined): void {
    clearTimeout(this.timer);
    const event: TransferEvent = {
      client: this.client,
      path: this.path,
      bytes: this.session.bytesAcked,
      durationMs: Date.now() - this.startedAt,
      outcome,
      blksize: this.session.negotiated.blksize,
      windowsize: this.session.negotiated.windowsize,
      ...(detail === undefined ? {} : { detail }),
    };
    const summary = { bytes: event.bytes, durationMs: event.durationMs, outcome, detail };
    if (outcome === 'complete') this.log.info(summary, 'tftp transfer complete');
    else if (outcome === 'probe') this.log.debug(summary, 'tftp size probe ended by client (normal)');
    else this.log.warn(summary, 'tftp transfer ended early');
    // Close only after queued packets (e.g. a final ERROR) have left.
    void this.queue.then(async () => {
      for (const socket of [this.socket, this.strangers]) {
        try {
          socket.close();
        } catch {
          /* already closed */
        }
      }
      this.reader.dispose();
      await this.file.close().catch(() => undefined);
      this.onEnd(event);
      this.resolveDone();
    });
  }
}

export class TftpServer {
  private socket: Socket | undefined;
  private readonly transfers = new Set<Transfer>();
  /** Requests accepted but still opening their file count against the limit too. */
  private pending = 0;
  private readonly clientsInTransfer = new Set<string>();
  /** Transfers (open or opening) per client IP address. */
  private readonly perAddress = new Map<string, number>();
  private readonly limits: SessionLimits;
  private readonly maxTransfers: number;
  /** RRQs waiting for a slot, first come first served (Map order), by client address and port. */
  private readonly waiting = new Map<string, { request: RequestPacket; rinfo: RemoteInfo; since: number }>();
  private readonly maxWaiting: number;
  private readonly maxTransfersPerAddress: number;
  private readonly log: Logger;

  constructor(private readonly options: TftpServerOptions) {
    this.limits = { ...defaultSessionLimits, ...options.limits };
    this.maxTransfers = options.maxTransfers ?? 64;
    this.maxTransfersPerAddress = options.maxTransfersPerAddress ?? 4;
    this.maxWaiting = options.maxWaiting ?? MAX_WAITING_REQUESTS;
    this.log = (options.log ?? silentLogger).child({ phase: 'tftp' });
  }

  /** RRQs waiting for a transfer slot. */
  get waitingRequests(): number {
    return this.waiting.size;
  }

  get activeTransfers(): number {
    return this.transfers.size + this.pending;
  }

  /** Transfers (open or opening) from one client address. */
  transfersFrom(address: string): number {
    return this.perAddress.get(address) ?? 0;
  }

  private countAddress(address: string, delta: 1 | -1): void {
    const n = (this.perAddress.get(address) ?? 0) + delta;
    if (n > 0) this.perAddress.set(address, n);
    else this.perAddress.delete(address);
  }

  /** Binds the request socket; resolves with the bound address (port 0 -> the chosen one). */
  async start(): Promise<{ address: string; port: number }> {
    if (this.socket) throw new Error('tftp server already started');
    const socket = createSocket({ type: isIPv6(this.options.host) ? 'udp6' : 'udp4', recvBufferSize: BURST_RECEIVE_BYTES });
    await bindSocket(socket, this.options.host, this.options.port);
    warnIfReceiveBufferCapped(socket, this.log, `tftp ${this.options.host}:${this.options.port}`);
    socket.on('error', (err) => this.log.error({ err }, 'tftp request socket error'));
    socket.on('message', (msg, rinfo) => {
      this.onRequest(msg, rinfo).catch((err: unknown) => this.log.error({ err }, 'tftp request handling failed'));
    });
    this.socket = socket;
    const { address, port } = socket.address();
    this.log.info({ address, port }, 'tftp server listening');
    return { address, port };
  }

  /** Closes the request socket and ends every transfer (clients get ERROR 0). */
  async stop(): Promise<void> {
    const socket = this.socket;
    this.socket = undefined;
    if (socket) await new Promise<void>((resolve) => socket.close(() => resolve()));
    this.waiting.clear();
    const transfers = [...this.transfers];
    for (const t of transfers) t.abort('server shutting down');
    await Promise.all(transfers.map((t) => t.done));
  }

  private refuse(rinfo: RemoteInfo, path: string, code: number, message: string): void {
    this.log.info({ client: { address: rinfo.address, port: rinfo.port }, path, code, message }, 'tftp request refused');
    this.socket?.send(errorPacket(code, message), rinfo.port, rinfo.address, () => undefined);
    try {
      this.options.onTransfer?.({ client: { address: rinfo.address, port: rinfo.port }, path, bytes: 0, durationMs: 0, outcome: 'refused', detail: message });
    } catch (err) {
      this.log.error({ err }, 'tftp onTransfer callback threw');
    }
  }

  private async onRequest(msg: Buffer, rinfo: RemoteInfo): Promise<void> {
    const parsed = parsePacket(msg);
    if (!parsed.ok) {
      this.log.debug({ client: { address: rinfo.address, port: rinfo.port }, error: parsed.error }, 'tftp malformed request ignored');
      return;
    }
    const packet = parsed.packet;
    if (packet.op === 'WRQ') return this.refuse(rinfo, packet.filename, ErrorCode.AccessViolation, 'Access violation: this server is read-only');
    // DATA/ACK/ERROR/OACK to the request port belong to no transfer: dropped, as tftp-hpa does.
    if (packet.op !== 'RRQ') return;
    await this.onReadRequest(packet, rinfo);
  }

  /**
   * Over maxTransfers an RRQ waits for a slot, in order of arrival, unanswered: PXE firmware
   * takes an ERROR as the end of its boot, while it retransmits an unanswered RRQ for about 24 s
   * (a retransmission keeps the first one's place), so waiting costs it no retry period and no
   * refusal. Bounded: beyond maxWaiting, an ERROR.
   */
  private wait(key: string, request: RequestPacket, rinfo: RemoteInfo, path: string): void {
    const client = { address: rinfo.address, port: rinfo.port };
    if (this.waiting.has(key)) {
      this.log.debug({ client, path }, 'tftp request retransmitted while waiting for a transfer slot (keeps its place)');
      return;
    }
    if (this.waiting.size >= this.maxWaiting) {
      return this.refuse(rinfo, path, ErrorCode.NotDefined, `Server busy: ${this.maxTransfers} transfers in progress and ${this.maxWaiting} waiting (the limits), retry later`);
    }
    this.waiting.set(key, { request, rinfo, since: Date.now() });
    this.log.debug({ client, path, waiting: this.waiting.size }, 'tftp request waits for a transfer slot: server busy');
    this.admitWaiting();
  }

  /** Starts waiting RRQs, oldest first, while slots are free. */
  private admitWaiting(): void {
    for (const [key, { request, rinfo, since }] of this.waiting) {
      if (this.activeTransfers >= this.maxTransfers || !this.socket) return;
      this.waiting.delete(key);
      if (Date.now() - since > MAX_WAIT_MS) {
        this.log.debug({ client: { address: rinfo.address, port: rinfo.port }, waitedMs: Date.now() - since }, 'tftp waiting request dropped: its client has given up on it');
        continue;
      }
      // Synchronously counted against the limit (pending) before any await in onReadRequest.
      this.onReadRequest(request, rinfo, true).catch((err: unknown) => this.log.error({ err }, 'tftp request handling failed'));
    }
  }

  private async onReadRequest(request: RequestPacket, rinfo: RemoteInfo, fromQueue = false): Promise<void> {
    const client: TftpClient = { address: rinfo.address, port: rinfo.port };
    const key = `${rinfo.address}|${rinfo.port}`;
    // A retransmitted RRQ (our first answer was lost) must not start a second transfer.
    if (this.clientsInTransfer.has(key)) return;
    if (request.mode !== 'octet') {
      // netascii would need line-ending conversion that changes sizes; boot clients all use octet.
      return this.refuse(rinfo, request.filename, ErrorCode.NotDefined, `Only octet mode is supported (got ${request.mode})`);
    }
    const normalised = normaliseTftpPath(request.filename);
    if (!normalised.ok) return this.refuse(rinfo, request.filename, ErrorCode.AccessViolation, `Access violation: ${normalised.reason}`);
    const path = normalised.path;
    if (this.activeTransfers >= this.maxTransfers || (this.waiting.size > 0 && !fromQueue)) return this.wait(key, request, rinfo, path);
    if (this.transfersFrom(rinfo.address) >= this.maxTransfersPerAddress) {
      return this.refuse(
        rinfo,
        path,
        ErrorCode.NotDefined,
        `Too many transfers from ${rinfo.address}: ${this.maxTransfersPerAddress} in progress (the per-address limit), retry later`,
      );
    }

    this.pending++;
    this.clientsInTransfer.add(key);
    this.countAddress(rinfo.address, 1);
    let file: TftpFile | null = null;
    let sockets: { peer: Socket; strangers: Socket } | undefined;
    try {
      try {
        file = await this.options.source(path, client);
      } catch (err) {
        this.log.error({ err, path }, 'tftp file source failed');
        return this.refuse(rinfo, path, ErrorCode.NotDefined, 'Internal error opening file');
      }
      if (file === null) return this.refuse(rinfo, path, ErrorCode.FileNotFound, 'File not found');
      if (!this.socket) {
        await file.close().catch(() => undefined);
        file = null;
        return; // stopped meanwhile
      }
      sockets = await openTransferSockets(this.options.host, client);
    } catch (err) {
      this.log.error({ err, path }, 'tftp transfer socket bind failed');
      await file?.close().catch(() => undefined);
      file = null;
      return this.refuse(rinfo, path, ErrorCode.NotDefined, 'Internal error');
    } finally {
      this.pending--;
      if (file === null || sockets === undefined) {
        this.clientsInTransfer.delete(key);
        this.countAddress(rinfo.address, -1);
        this.admitWaiting();
      }
    }

    const session = new ReadSession(request, file.size, this.limits);
    const log = this.log.child({ client, path });
    log.debug({ options: request.options, negotiated: session.negotiated }, 'tftp transfer starting');
    const transfer: Transfer = new Transfer(sockets.peer, sockets.strangers, client, path, file, session, log, (event) => {
      this.transfers.delete(transfer);
      this.clientsInTransfer.delete(key);
      this.countAddress(rinfo.address, -1);
      this.admitWaiting();
      try {
        this.options.onTransfer?.(event);
      } catch (err) {
        this.log.error({ err }, 'tftp onTransfer callback threw');
      }
    });
    this.transfers.add(transfer);
    transfer.begin();
  }
}

export function createTftpServer(options: TftpServerOptions): TftpServer {
  return new TftpServer(options);
}
