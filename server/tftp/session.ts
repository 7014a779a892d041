/**
 * The transfer state machine of one read request (RRQ), with no sockets and no files: feed it
 * events (start, a packet from the client, a timer expiry), get actions back (packets to send,
 * DATA blocks to read and send, a timer to arm, the end of the transfer). The server loop does
 * the I/O, so everything subtle (option negotiation, windows, partial ACKs, rollover,
 * retransmission) is tested byte for byte without a network.
 */
import { ErrorCode, errorPacket, serializePacket, type RequestPacket, type TftpOption, type TftpPacket } from './codec.ts';

export interface SessionLimits {
  /** Largest blksize granted; a client asking more gets this (RFC 2348 allows the server to lower it). */
  maxBlksize: number;
  /** Largest windowsize granted (RFC 7440). */
  maxWindowsize: number;
  /** First retransmission timeout when the client negotiated none. */
  timeoutMs: number;
  /** Cap of the exponential backoff. */
  maxTimeoutMs: number;
  /** Retransmissions of the same window before giving up. */
  maxRetries: number;
}

export const defaultSessionLimits: SessionLimits = {
  maxBlksize: 1468,
  maxWindowsize: 64,
  timeoutMs: 1000,
  maxTimeoutMs: 8000,
  maxRetries: 6,
};

/** A DATA block to send: the server reads `length` bytes at `offset` and sends them as block `wire`. */
export interface DataBlock {
  /** 1-based block index in the file (never wraps). */
  index: number;
  /** The block number on the wire: index modulo 65536 (wraps to 0 after 65535, as tftp-hpa does). */
  wire: number;
  offset: number;
  length: number;
}

export type TransferOutcome =
  /** Every block acknowledged. */
  | 'complete'
  /** The client refused our OACK with ERROR 8: UEFI firmware does this to learn tsize. Normal. */
  | 'probe'
  /** The client sent an ERROR. */
  | 'client-error'
  /** The client went silent past the retries. */
  | 'timeout'
  /** The server ended it (file read failure, shutdown). */
  | 'aborted';

export type SessionAction =
  | { kind: 'send'; packet: Buffer }
  | { kind: 'send-data'; blocks: DataBlock[] }
  /** (Re)arm the single retransmission timer; replaces any armed one. */
  | { kind: 'arm-timer'; ms: number }
  | { kind: 'finish'; outcome: TransferOutcome; detail?: string };

export interface Negotiated {
  blksize: number;
  windowsize: number;
  timeoutMs: number;
  /** Options to acknowledge in an OACK, in the client's order and spelling; empty = no OACK. */
  oack: TftpOption[];
}

function intValue(value: string, min: number, max: number): number | null {
  if (!/^\d{1,10}$/.test(value.trim())) return null;
  const n = Number(value.trim());
  return n >= min && n <= max ? n : null;
}

/** RFC 2347 negotiation: unknown or out-of-range options are left out of the OACK (= refused). */
export function negotiateOptions(options: TftpOption[], fileSize: number, limits: SessionLimits): Negotiated {
  const result: Negotiated = { blksize: 512, windowsize: 1, timeoutMs: limits.timeoutMs, oack: [] };
  for (const { name, value } of options) {
    switch (name.toLowerCase()) {
      case 'blksize': {
        const asked = intValue(value, 8, 65464);
        if (asked === null) break;
        result.blksize = Math.min(asked, limits.maxBlksize);
        result.oack.push({ name, value: String(result.blksize) });
        break;
      }
      case 'tsize':
        // In an RRQ the client sends 0 and we answer the real size (RFC 2349).
        if (intValue(value, 0, Number.MAX_SAFE_INTEGER) === null) break;
        result.oack.push({ name, value: String(fileSize) });
        break;
      case 'timeout': {
        const seconds = intValue(value, 1, 255);
        // Longer than our backoff cap is refused (left out of the OACK): a client asking 255 s
        // would otherwise hold a transfer slot for half an hour after it vanished.
        if (seconds === null || seconds * 1000 > limits.maxTimeoutMs) break;
        result.timeoutMs = seconds * 1000;
        result.oack.push({ name, value: String(seconds) });
        break;
      }
      case 'windowsize': {
        const asked = intValue(value, 1, 65535);
        if (asked === null) break;
        result.windowsize = Math.min(asked, limits.maxWindowsize);
        result.oack.push({ name, value: String(result.windowsize) });
        break;
      }
      default:
        break;
    }
  }
  return result;
}

type Phase = 'idle' | 'oack' | 'data' | 'done';

export class ReadSession {
  readonly negotiated: Negotiated;
  readonly lastBlock: number;
  private phase: Phase = 'idle';
  /** Lowest block index not yet acknowledged. */
  private base = 1;
  /** Highest block index sent so far. */
  private sentUpTo = 0;
  private retries = 0;
  private currentTimeoutMs: number;

  constructor(
    request: RequestPacket,
    readonly fileSize: number,
    limits: SessionLimits = defaultSessionLimits,
  ) {
    this.negotiated = negotiateOptions(request.options, fileSize, limits);
    // The final block is the first one shorter than blksize, possibly empty.
    this.lastBlock = Math.floor(fileSize / this.negotiated.blksize) + 1;
    this.currentTimeoutMs = this.negotiated.timeoutMs;
    this.maxTimeoutMs = limits.maxTimeoutMs;
    this.maxRetries = limits.maxRetries;
  }
  private readonly maxTimeoutMs: number;
  private readonly maxRetries: number;

  get finished(): boolean {
    return this.phase === 'done';
  }

  /** File bytes the client has acknowledged. */
  get bytesAcked(): number {
    return Math.min(this.fileSize, (this.base - 1) * this.negotiated.blksize);
  }

  start(): SessionAction[] {
    if (this.phase !== 'idle') return [];
    if (this.negotiated.oack.length > 0) {
      this.phase = 'oack';
      return [this.oackPacket(), { kind: 'arm-timer', ms: this.currentTimeoutMs }];
    }
    this.phase = 'data';
    return this.sendWindow();
  }

  receive(packet: TftpPacket): SessionAction[] {
    if (this.phase === 'done' || this.phase === 'idle') return [];
    if (packet.op === 'ERROR') {
      const probe = this.phase === 'oack' && packet.code === ErrorCode.OptionRefused;
      return this.finish(probe ? 'probe' : 'client-error', `client error ${packet.code}: ${packet.message}`);
    }
    // Anything but ACK and ERROR from the peer is ignored: the transfer goes on.
    if (packet.op !== 'ACK') return [];

    if (this.phase === 'oack') {
      if (packet.block !== 0) return [];
      this.phase = 'data';
      this.progress();
      return this.sendWindow();
    }

    // The acknowledged index: the one in [base-1, sentUpTo] with this wire number.
    const acked = this.base - 1 + ((packet.block - ((this.base - 1) & 0xffff)) & 0xffff);
    // A duplicate of the previous ACK changes nothing (no resend: Sorcerer's Apprentice);
    // one beyond what we sent is bogus.
    if (acked === this.base - 1 || acked > this.sentUpTo) return [];
    this.base = acked + 1;
    this.progress();
    if (acked >= this.lastBlock) return this.finish('complete');
    // A partial-window ACK also lands here: the next window starts right after it.
    return this.sendWindow();
  }

  timeout(): SessionAction[] {
    if (this.phase === 'done' || this.phase === 'idle') return [];
    this.retries++;
    if (this.retries > this.maxRetries) return this.finish('timeout', `no answer after ${this.maxRetries} retransmissions`);
    this.currentTimeoutMs = Math.min(this.currentTimeoutMs * 2, this.maxTimeoutMs);
    if (this.phase === 'oack') return [this.oackPacket(), { kind: 'arm-timer', ms: this.currentTimeoutMs }];
    return this.sendWindow();
  }

  /** The server ends the transfer (read error, shutdown): an ERROR to the client, then finish. */
  abort(code: number, message: string): SessionAction[] {
    if (this.phase === 'done') return [];
    return [{ kind: 'send', packet: errorPacket(code, message) }, ...this.finish('aborted', message)];
  }

  private progress(): void {
    this.retries = 0;
    this.currentTimeoutMs = this.negotiated.timeoutMs;
  }

  private oackPacket(): SessionAction {
    return { kind: 'send', packet: serializePacket({ op: 'OACK', options: this.negotiated.oack }) };
  }

  private sendWindow(): SessionAction[] {
    const { blksize, windowsize } = this.negotiated;
    const last = Math.min(this.base + windowsize - 1, this.lastBlock);
    const blocks: DataBlock[] = [];
    for (let index = this.base; index <= last; index++) {
      const offset = (index - 1) * blksize;
      blocks.push({ index, wire: index & 0xffff, offset, length: Math.max(0, Math.min(blksize, this.fileSize - offset)) });
    }
    this.sentUpTo = Math.max(this.sentUpTo, last);
    return [{ kind: 'send-data', blocks }, { kind: 'arm-timer', ms: this.currentTimeoutMs }];
  }

  private finish(outcome: TransferOutcome, detail?: string): SessionAction[] {
    this.phase = 'done';
    return [{ kind: 'finish', outcome, ...(detail === undefined ? {} : { detail }) }];
  }
}
