/**
 * NBD wire format (fixed newstyle handshake, simple replies only), as doc/proto.md of
 * NetworkBlockDevice/nbd describes it. Pure: bytes in, messages out; messages in, bytes out.
 * Every integer on the wire is big-endian.
 */

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT", also prefixes every option request
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

/** Handshake flags (server) and client flags share bit positions. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const SERVER_HANDSHAKE_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/** Transmission flags. */
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_FLUSH = 1 << 2;
export const TFLAG_CAN_MULTI_CONN = 1 << 8;
/** What every export of ours advertises: read-only, and safe to read over several connections. */
export const EXPORT_TRANSMISSION_FLAGS = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;

export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** Size constraints we advertise: the spec's defaults (min 1, preferred 4 KiB, max payload 32 MiB). */
export const BLOCK_SIZE = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 } as const;
/** Spec: export names MUST be no longer than 4096 bytes. */
export const MAX_NAME_BYTES = 4096;
/** No option of ours carries more than a name and a short info list; anything larger is abuse. */
export const DEFAULT_MAX_OPTION_BYTES = 64 * 1024;

const SERVER_GREETING_LENGTH = 18;
const CLIENT_FLAGS_LENGTH = 4;
const OPTION_HEADER_LENGTH = 16;
const REQUEST_LENGTH = 28;
const EXPORT_NAME_ZEROES = 124;

// ---------------------------------------------------------------- server -> client

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeServerGreeting(flags: number = SERVER_HANDSHAKE_FLAGS): Buffer {
  const b = Buffer.alloc(SERVER_GREETING_LENGTH);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

/** S: reply magic, the option replied to, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** An error reply, with a human-readable message as the spec allows. */
export function encodeOptionError(option: number, type: number, message = ''): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message, 'utf8'));
}

/** NBD_REP_SERVER (one entry of an NBD_OPT_LIST answer): 32-bit name length, name. */
export function encodeServerEntry(name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const data = Buffer.alloc(4 + nameBytes.length);
  data.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(data, 4);
  return encodeOptionReply(Opt.LIST, Rep.SERVER, data);
}

/** NBD_REP_INFO carrying NBD_INFO_EXPORT: 16-bit type, 64-bit size, 16-bit transmission flags. */
export function encodeInfoExport(option: number, size: number, transmissionFlags: number): Buffer {
  const data = Buffer.alloc(12);
  data.writeUInt16BE(Info.EXPORT, 0);
  data.writeBigUInt64BE(BigInt(size), 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return encodeOptionReply(option, Rep.INFO, data);
}

/** NBD_REP_INFO carrying NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum payload. */
export function encodeInfoBlockSize(option: number, sizes: { minimum: number; preferred: number; maximum: number } = BLOCK_SIZE): Buffer {
  const data = Buffer.alloc(14);
  data.writeUInt16BE(Info.BLOCK_SIZE, 0);
  data.writeUInt32BE(sizes.minimum, 2);
  data.writeUInt32BE(sizes.preferred, 6);
  data.writeUInt32BE(sizes.maximum, 10);
  return encodeOptionReply(option, Rep.INFO, data);
}

/** NBD_REP_INFO carrying NBD_INFO_NAME: the canonical export name. */
export function encodeInfoName(option: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const data = Buffer.alloc(2 + nameBytes.length);
  data.writeUInt16BE(Info.NAME, 0);
  nameBytes.copy(data, 2);
  return encodeOptionReply(option, Rep.INFO, data);
}

/**
 * The whole successful answer to NBD_OPT_INFO / NBD_OPT_GO: the infos the client asked for
 * that we know (NBD_INFO_EXPORT always, first), then NBD_REP_ACK.
 */
export function encodeInfoSuccess(option: number, exp: { name: string; size: number; transmissionFlags: number }, requested: readonly number[]): Buffer {
  const parts = [encodeInfoExport(option, exp.size, exp.transmissionFlags)];
  if (requested.includes(Info.NAME)) parts.push(encodeInfoName(option, exp.name));
  if (requested.includes(Info.BLOCK_SIZE)) parts.push(encodeInfoBlockSize(option));
  parts.push(encodeOptionReply(option, Rep.ACK));
  return Buffer.concat(parts);
}

/** The answer to NBD_OPT_EXPORT_NAME: size, transmission flags, then 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export const SIMPLE_REPLY_HEADER_LENGTH = 16;

/** Writes a simple reply header (magic, error, handle) at `offset` of `target`. */
export function writeSimpleReplyHeader(target: Buffer, offset: number, error: number, handle: bigint): void {
  target.writeUInt32BE(SIMPLE_REPLY_MAGIC, offset);
  target.writeUInt32BE(error >>> 0, offset + 4);
  target.writeBigUInt64BE(handle, offset + 8);
}

/** A simple reply with no payload (errors, and successes of commands other than READ). */
export function encodeSimpleReply(error: number, handle: bigint): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_HEADER_LENGTH);
  writeSimpleReplyHeader(b, 0, error, handle);
  return b;
}

// ---------------------------------------------------------------- client -> server

export type ClientMessage =
  | { kind: 'clientFlags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer }
  /** A transmission request. For NBD_CMD_WRITE the payload has been read and dropped. */
  | { kind: 'request'; flags: number; type: number; handle: bigint; offset: bigint; length: number };

export type ProtocolErrorCode =
  | 'bad-client-flags'
  | 'bad-option-magic'
  | 'option-too-long'
  | 'bad-request-magic'
  | 'write-too-long';

/** The peer broke the protocol in a way that leaves no choice but a hard disconnect. */
export class NbdProtocolError extends Error {
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'NbdProtocolError';
  }
}

export type ParserPhase = 'clientFlags' | 'options' | 'transmission';

export interface ParserLimits {
  /** Option data longer than this is refused with a protocol error (hard disconnect). */
  maxOptionBytes: number;
  /** NBD_CMD_WRITE payloads longer than this are a protocol error (we could not even skip them sanely). */
  maxWritePayload: number;
}

/**
 * Incremental parser of what a client sends. Feed it bytes with `push`, take messages with
 * `next` (null = need more bytes). The phase changes only when the server says so
 * (`enterTransmission`), because only the server's answer to an option decides it.
 * After a protocol error the parser stays failed: every `next` throws the same error.
 */
export class ClientStreamParser {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private phase: ParserPhase = 'clientFlags';
  /** A write request whose payload is still being skipped. */
  private pendingWrite: Extract<ClientMessage, { kind: 'request' }> | null = null;
  private skipRemaining = 0;
  private failure: NbdProtocolError | null = null;
  private readonly limits: ParserLimits;

  constructor(limits: Partial<ParserLimits> = {}) {
    this.limits = { maxOptionBytes: DEFAULT_MAX_OPTION_BYTES, maxWritePayload: BLOCK_SIZE.maximum, ...limits };
  }

  get currentPhase(): ParserPhase {
    return this.phase;
  }

  /** Bytes received and not yet consumed by a message. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  enterTransmission(): void {
    this.phase = 'transmission';
  }

  next(): ClientMessage | null {
    if (this.failure) throw this.failure;
    try {
      return this.parseOne();
    } catch (err) {
      if (err instanceof NbdProtocolError) this.failure = err;
      throw err;
    }
  }

  private parseOne(): ClientMessage | null {
    if (this.pendingWrite) return this.skipWritePayload();
    switch (this.phase) {
      case 'clientFlags': {
        if (this.buffered < CLIENT_FLAGS_LENGTH) return null;
        const flags = this.take(CLIENT_FLAGS_LENGTH).readUInt32BE(0);
        if ((flags & ~SERVER_HANDSHAKE_FLAGS) !== 0) {
          throw new NbdProtocolError('bad-client-flags', `client flags 0x${flags.toString(16)} include bits we did not offer`);
        }
        this.phase = 'options';
        return { kind: 'clientFlags', flags };
      }
      case 'options': {
        if (this.buffered < OPTION_HEADER_LENGTH) return null;
        const header = this.peek(OPTION_HEADER_LENGTH);
        if (header.readBigUInt64BE(0) !== IHAVEOPT) throw new NbdProtocolError('bad-option-magic', 'option request without IHAVEOPT magic');
        const option = header.readUInt32BE(8);
        const length = header.readUInt32BE(12);
        if (length > this.limits.maxOptionBytes) {
          throw new NbdProtocolError('option-too-long', `option ${option} carries ${length} bytes (limit ${this.limits.maxOptionBytes})`);
        }
        if (this.buffered < OPTION_HEADER_LENGTH + length) return null;
        const all = this.take(OPTION_HEADER_LENGTH + length);
        return { kind: 'option', option, data: Buffer.from(all.subarray(OPTION_HEADER_LENGTH)) };
      }
      case 'transmission': {
        if (this.buffered < REQUEST_LENGTH) return null;
        const r = this.take(REQUEST_LENGTH);
        if (r.readUInt32BE(0) !== REQUEST_MAGIC) throw new NbdProtocolError('bad-request-magic', 'request without NBD_REQUEST_MAGIC');
        const request = {
          kind: 'request' as const,
          flags: r.readUInt16BE(4),
          type: r.readUInt16BE(6),
          handle: r.readBigUInt64BE(8),
          offset: r.readBigUInt64BE(16),
          length: r.readUInt32BE(24),
        };
        if (request.type !== Cmd.WRITE || request.length === 0) return request;
        if (request.length > this.limits.maxWritePayload) {
          throw new NbdProtocolError('write-too-long', `write payload of ${request.length} bytes (limit ${this.limits.maxWritePayload})`);
        }
        this.pendingWrite = request;
        this.skipRemaining = request.length;
        return this.skipWritePayload();
      }
    }
  }

  /** Drops a write's payload as it arrives, without holding it in memory. */
  private skipWritePayload(): ClientMessage | null {
    const n = Math.min(this.skipRemaining, this.buffered);
    if (n > 0) this.discard(n);
    this.skipRemaining -= n;
    if (this.skipRemaining > 0) return null;
    const done = this.pendingWrite;
    this.pendingWrite = null;
    return done;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined.subarray(0, n);
  }

  private take(n: number): Buffer {
    const out = this.peek(n);
    this.discard(n);
    return out;
  }

  private discard(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      if (first.length <= n) {
        this.chunks.shift();
        n -= first.length;
      } else {
        this.chunks[0] = first.subarray(n);
        n = 0;
      }
    }
  }
}

// ---------------------------------------------------------------- option data

export interface InfoRequest {
  name: string;
  /** NBD_INFO_* types the client asked for. */
  infos: number[];
}

/**
 * Decodes the data of NBD_OPT_INFO / NBD_OPT_GO: 32-bit name length, name, 16-bit count,
 * count x 16-bit info types. Null when it is malformed (reply NBD_REP_ERR_INVALID).
 */
export function decodeInfoRequest(data: Buffer): InfoRequest | null {
  if (data.length < 6) return null;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > MAX_NAME_BYTES || nameLength > data.length - 6) return null;
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 4 + nameLength + 2 + 2 * count) return null;
  const name = decodeName(data.subarray(4, 4 + nameLength));
  if (name === null) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { name, infos };
}

/** The export name of NBD_OPT_EXPORT_NAME (the whole option data), or null if it is not a valid name. */
export function decodeExportName(data: Buffer): string | null {
  if (data.length > MAX_NAME_BYTES) return null;
  return decodeName(data);
}

/** Names are UTF-8 without NUL; anything else is not a name we could have. */
function decodeName(bytes: Buffer): string | null {
  if (bytes.includes(0)) return null;
  const name = bytes.toString('utf8');
  if (!Buffer.from(name, 'utf8').equals(bytes)) return null;
  return name;
}
