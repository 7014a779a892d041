/**
 * One NBD connection as a state machine with no socket and no file: feed it the bytes the client
 * sent, the results of export lookups and reads, the moments reply bytes left for the kernel, and
 * timer expiries; get back actions (bytes to send, an export to look up, a read to do, the end of
 * the connection). The server loop (server.ts) does the I/O. Everything an outsider can make us
 * hold per connection is bounded here, so it is tested without a network:
 *
 * - reply bytes held (reads being done + replies handed to the socket and not yet taken by the
 *   kernel) stay under `maxHeldBytes`, except that one read may always run alone: a client that
 *   never reads its socket costs at most one maximum-size reply, not 16 x 32 MiB;
 * - requests parsed but not yet started are at most `maxPendingReads`; beyond that, or while the
 *   held bytes are over the bound, the session asks not to be fed (`wantsInput` false) and the
 *   client's requests wait in its own TCP buffers;
 * - timers: a client must reach transmission within `handshakeTimeoutMs`; after that a connection
 *   is never cut for being idle (a mounted root sends nothing for hours and the kernel sends no
 *   keepalive reads: an idle root connection is normal). It is cut only when it has replies
 *   waiting and none of their bytes were taken for `stallTimeoutMs` (the client stopped reading
 *   its socket). The kernel client gives up on a request after its own timeout (10 s for ours)
 *   and reconnects, so a healthy client never comes near this; dead peers are reaped by TCP
 *   keepalive (idle) or TCP retransmission (data unacknowledged) in the server loop.
 *   Progress is seen per completed socket write (one reply), so a reply must take the client
 *   longer than stallTimeoutMs to count as stalled: with the kernel's requests of at most a few
 *   MiB, that is a link slower than ~10-100 KiB/s.
 */
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
  type ClientMessage,
} from './codec.ts';

export interface SessionLimits {
  /** Reply bytes held per connection (reads in progress + replies not yet taken by the kernel). */
  maxHeldBytes: number;
  /** Read requests parsed and waiting for room under maxHeldBytes, and reads running, each. */
  maxPendingReads: number;
  /** From accept to the end of negotiation. */
  handshakeTimeoutMs: number;
  /** Replies waiting and not one byte of them taken by the client for this long: the connection ends. */
  stallTimeoutMs: number;
  /** Option requests per connection before we call it abuse and disconnect. */
  maxOptions: number;
}

export const defaultSessionLimits: SessionLimits = {
  maxHeldBytes: BLOCK_SIZE.maximum + SIMPLE_REPLY_HEADER_LENGTH,
  maxPendingReads: 64,
  handshakeTimeoutMs: 10_000,
  stallTimeoutMs: 120_000,
  maxOptions: 256,
};

export interface ReadAction {
  kind: 'read';
  handle: bigint;
  offset: number;
  length: number;
  /** Bytes this read holds until `readDone` (header + payload). */
  reserved: number;
  /** When the request was parsed (the session's clock), for latency accounting. */
  parsedAt: number;
}

export type SessionAction =
  /** Write these bytes; report with `flushed(bytes.length)` once the socket handed them to the kernel. */
  | { kind: 'send'; bytes: Buffer }
  /** Look an export up (INFO) or open it (GO, EXPORT_NAME); answer with `exportResult`. */
  | { kind: 'lookup'; name: string; open: boolean }
  /** NBD_OPT_LIST: answer with `listResult`. */
  | { kind: 'list' }
  /** Negotiation is over: this export is being served (the opened file is the connection's now). */
  | { kind: 'transmission'; name: string; size: number }
  /** Read the range and send a simple reply; report with `readDone`, then `flushed` for the bytes sent. */
  | ReadAction
  /** Stop reading the socket: the client is over its limits (`wantsInput` says when to resume). */
  | { kind: 'throttled'; heldBytes: number; pendingReads: number }
  /** Finish sending what was queued, then close (ABORT, DISC). */
  | { kind: 'end'; reason: string }
  /** Close now. */
  | { kind: 'close'; reason: string };

type Phase = 'handshake' | 'transmission' | 'closed';

interface PendingOption {
  option: number;
  name: string;
  infos: number[];
}

export class NbdSession {
  private readonly parser = new ClientStreamParser();
  private readonly limits: SessionLimits;
  private phase: Phase = 'handshake';
  private clientFlags = 0;
  private options = 0;
  /** An option waiting for the server loop's lookup. */
  private awaiting: PendingOption | null = null;
  private disconnecting = false;
  private exportSize = 0;
  private name: string | null = null;
  private readonly pending: { handle: bigint; offset: number; length: number; parsedAt: number }[] = [];
  private readsRunning = 0;
  private reservedBytes = 0;
  private unflushedBytes = 0;
  private peak = 0;
  private readonly startedAt: number;
  /** When the oldest unflushed bytes last saw progress; null when nothing is unflushed. */
  private stallSince: number | null = null;
  private throttled = false;
  /** The client half-closed: nothing more will arrive. */
  private inputEnded = false;
  /** The last pump stopped for want of bytes (not because the session did not want input). */
  private starved = false;

  constructor(
    limits: Partial<SessionLimits> = {},
    private readonly now: () => number = () => performance.now(),
  ) {
    this.limits = { ...defaultSessionLimits, ...limits };
    this.startedAt = now();
  }

  get exportName(): string | null {
    return this.name;
  }

  get size(): number {
    return this.exportSize;
  }

  get closed(): boolean {
    return this.phase === 'closed';
  }

  get inTransmission(): boolean {
    return this.phase === 'transmission';
  }

  /** Reply bytes this connection makes the server hold now. */
  get heldBytes(): number {
    return this.reservedBytes + this.unflushedBytes;
  }

  /** The most heldBytes ever was. */
  get peakHeldBytes(): number {
    return this.peak;
  }

  get pendingReads(): number {
    return this.pending.length;
  }

  /** Whether the server loop should read the socket now. */
  get wantsInput(): boolean {
    return (
      this.phase !== 'closed' &&
      !this.disconnecting &&
      this.awaiting === null &&
      this.pending.length < this.limits.maxPendingReads &&
      this.unflushedBytes < this.limits.maxHeldBytes
    );
  }

  /** When `timer()` must be called next (session clock), or null when no timer is needed. */
  get deadline(): number | null {
    if (this.phase === 'handshake') return this.startedAt + this.limits.handshakeTimeoutMs;
    if (this.phase === 'transmission' && this.stallSince !== null) return this.stallSince + this.limits.stallTimeoutMs;
    return null;
  }

  /** The greeting: the first thing sent on a connection. */
  start(): SessionAction[] {
    return [this.send(encodeServerGreeting())];
  }

  receive(bytes: Buffer): SessionAction[] {
    if (this.phase === 'closed') return [];
    this.parser.push(bytes);
    return this.pump();
  }

  /**
   * The client closed its sending side (TCP half-close). What it sent is still answered, then the
   * session ends ('client-eof'): like NBD_CMD_DISC, but without the client saying so.
   */
  endOfInput(): SessionAction[] {
    if (this.phase === 'closed' || this.inputEnded) return [];
    this.inputEnded = true;
    return this.pump();
  }

  timer(): SessionAction[] {
    const deadline = this.deadline;
    if (deadline === null || this.now() < deadline) return [];
    return this.close(this.phase === 'handshake' ? 'handshake-timeout' : 'write-stalled');
  }

  /** The server loop's answer to a `lookup`: the export's size, or null if unknown or unopenable. */
  exportResult(found: { size: number } | null): SessionAction[] {
    const asked = this.awaiting;
    if (!asked || this.phase !== 'handshake') return [];
    this.awaiting = null;
    const out: SessionAction[] = [];
    if (asked.option === Opt.EXPORT_NAME) {
      // No way to report an error here: the spec says terminate the session.
      if (!found) return this.close('unknown-export');
      out.push(this.send(encodeExportNameReply(found.size, EXPORT_TRANSMISSION_FLAGS, (this.clientFlags & FLAG_NO_ZEROES) !== 0)));
      out.push(this.enterTransmission(asked.name, found.size));
    } else if (!found) {
      out.push(this.send(encodeOptionError(asked.option, Rep.ERR_UNKNOWN, `unknown export: ${asked.name}`)));
    } else {
      const exp = { name: asked.name, size: found.size, transmissionFlags: EXPORT_TRANSMISSION_FLAGS };
      out.push(this.send(encodeInfoSuccess(asked.option, exp, asked.infos)));
      if (asked.option === Opt.GO) out.push(this.enterTransmission(asked.name, found.size));
    }
    return [...out, ...this.pump()];
  }

  /** The server loop's answer to `list`. */
  listResult(names: string[]): SessionAction[] {
    if (this.phase !== 'handshake') return [];
    this.awaiting = null;
    return [this.send(Buffer.concat([...names.map((n) => encodeServerEntry(n)), encodeOptionReply(Opt.LIST, Rep.ACK)])), ...this.pump()];
  }

  /** A `read` finished; `sentBytes` of reply were handed to the socket (0 if none was). */
  readDone(read: ReadAction, sentBytes: number): SessionAction[] {
    this.readsRunning--;
    this.reservedBytes -= read.reserved;
    if (this.phase === 'closed') return [];
    this.addUnflushed(sentBytes);
    return [...this.admitReads(), ...this.finishIfDisconnecting(), ...this.pump()];
  }

  /** `bytes` of what was sent were taken by the kernel (the socket write completed). */
  flushed(bytes: number): SessionAction[] {
    this.unflushedBytes = Math.max(0, this.unflushedBytes - bytes);
    this.stallSince = this.unflushedBytes > 0 ? this.now() : null;
    if (this.phase === 'closed') return [];
    return [...this.admitReads(), ...this.pump()];
  }

  /** The server ends the connection (socket gone, shutdown). */
  close(reason: string): SessionAction[] {
    if (this.phase === 'closed') return [];
    this.phase = 'closed';
    this.pending.length = 0;
    this.awaiting = null;
    return [{ kind: 'close', reason }];
  }

  // ------------------------------------------------------------------ internals

  private send(bytes: Buffer): SessionAction {
    this.addUnflushed(bytes.length);
    return { kind: 'send', bytes };
  }

  private addUnflushed(n: number): void {
    if (n <= 0) return;
    if (this.unflushedBytes === 0) this.stallSince = this.now();
    this.unflushedBytes += n;
    this.peak = Math.max(this.peak, this.heldBytes);
  }

  private pump(): SessionAction[] {
    const out: SessionAction[] = [];
    while (this.wantsInput) {
      let message: ClientMessage | null;
      try {
        message = this.parser.next();
      } catch (err) {
        if (!(err instanceof NbdProtocolError)) throw err;
        return [...out, ...this.close(`protocol-error:${err.code}`)];
      }
      if (message === null) break;
      if (message.kind === 'clientFlags') this.clientFlags = message.flags;
      else if (message.kind === 'option') out.push(...this.option(message.option, message.data));
      else out.push(...this.request(message));
    }
    this.starved = this.wantsInput;
    if (!this.wantsInput && this.phase === 'transmission' && !this.disconnecting && !this.throttled) {
      this.throttled = true;
      out.push({ kind: 'throttled', heldBytes: this.heldBytes, pendingReads: this.pending.length });
    } else if (this.wantsInput) this.throttled = false;
    return [...out, ...this.finishIfInputEnded()];
  }

  /** After a half-close: once every complete message is answered, end. */
  private finishIfInputEnded(): SessionAction[] {
    if (!this.inputEnded || this.phase === 'closed' || !this.starved) return [];
    if (this.awaiting !== null || this.readsRunning > 0 || this.pending.length > 0) return [];
    this.phase = 'closed';
    return [{ kind: 'end', reason: 'client-eof' }];
  }

  private option(option: number, data: Buffer): SessionAction[] {
    if (++this.options > this.limits.maxOptions) return this.close('too-many-options');
    switch (option) {
      case Opt.EXPORT_NAME: {
        const name = decodeExportName(data);
        if (name === null) return this.close('unknown-export');
        this.awaiting = { option, name, infos: [] };
        return [{ kind: 'lookup', name, open: true }];
      }
      case Opt.ABORT: {
        const ack = this.send(encodeOptionReply(option, Rep.ACK));
        this.phase = 'closed';
        return [ack, { kind: 'end', reason: 'abort' }];
      }
      case Opt.LIST:
        if (data.length !== 0) return [this.send(encodeOptionError(option, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data'))];
        this.awaiting = { option, name: '', infos: [] };
        return [{ kind: 'list' }];
      case Opt.INFO:
      case Opt.GO: {
        const request = decodeInfoRequest(data);
        if (!request) return [this.send(encodeOptionError(option, Rep.ERR_INVALID, 'malformed info request'))];
        this.awaiting = { option, name: request.name, infos: request.infos };
        return [{ kind: 'lookup', name: request.name, open: option === Opt.GO }];
      }
      default:
        // Includes STARTTLS (we run NOTLS) and STRUCTURED_REPLY (simple replies only).
        return [this.send(encodeOptionError(option, Rep.ERR_UNSUP))];
    }
  }

  private enterTransmission(name: string, size: number): SessionAction {
    this.phase = 'transmission';
    this.name = name;
    this.exportSize = size;
    this.parser.enterTransmission();
    return { kind: 'transmission', name, size };
  }

  private request(request: Extract<ClientMessage, { kind: 'request' }>): SessionAction[] {
    switch (request.type) {
      case Cmd.READ: {
        const { handle, length } = request;
        if (length > BLOCK_SIZE.maximum || request.offset + BigInt(length) > BigInt(this.exportSize)) {
          return [this.send(encodeSimpleReply(Errno.EINVAL, handle))];
        }
        this.pending.push({ handle, offset: Number(request.offset), length, parsedAt: this.now() });
        return this.admitReads();
      }
      case Cmd.DISC:
        this.disconnecting = true;
        return this.finishIfDisconnecting();
      case Cmd.WRITE:
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES:
        return [this.send(encodeSimpleReply(Errno.EPERM, request.handle))];
      case Cmd.FLUSH:
        // Nothing is ever written, so everything is always flushed.
        return [this.send(encodeSimpleReply(0, request.handle))];
      default:
        return [this.send(encodeSimpleReply(Errno.EINVAL, request.handle))];
    }
  }

  /** Starts waiting reads while they fit under maxHeldBytes; one read may always run alone. */
  private admitReads(): SessionAction[] {
    const out: SessionAction[] = [];
    while (this.phase === 'transmission' && this.pending.length > 0 && this.readsRunning < this.limits.maxPendingReads) {
      const next = this.pending[0]!;
      const reserved = SIMPLE_REPLY_HEADER_LENGTH + next.length;
      if (this.heldBytes > 0 && this.heldBytes + reserved > this.limits.maxHeldBytes) break;
      this.pending.shift();
      this.readsRunning++;
      this.reservedBytes += reserved;
      this.peak = Math.max(this.peak, this.heldBytes);
      out.push({ kind: 'read', handle: next.handle, offset: next.offset, length: next.length, reserved, parsedAt: next.parsedAt });
    }
    return out;
  }

  /** After NBD_CMD_DISC: answer what was asked before it, then end. */
  private finishIfDisconnecting(): SessionAction[] {
    if (!this.disconnecting || this.phase !== 'transmission' || this.readsRunning > 0 || this.pending.length > 0) return [];
    this.phase = 'closed';
    return [{ kind: 'end', reason: 'client-disc' }];
  }
}
