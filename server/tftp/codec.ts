/**
 * TFTP wire codec (RFC 1350, options per RFC 2347/2348/2349/7440): bytes <-> typed packets.
 * Pure: no I/O. Parsing never throws; malformed input yields a typed error.
 */

export const Opcode = { RRQ: 1, WRQ: 2, DATA: 3, ACK: 4, ERROR: 5, OACK: 6 } as const;

export const ErrorCode = {
  NotDefined: 0,
  FileNotFound: 1,
  AccessViolation: 2,
  DiskFull: 3,
  IllegalOperation: 4,
  UnknownTransferId: 5,
  FileExists: 6,
  NoSuchUser: 7,
  /** RFC 2347: the client refuses the OACK (UEFI's tsize probe ends this way). */
  OptionRefused: 8,
} as const;

/** An option as sent on the wire: `name` keeps the sender's spelling (matching is case-insensitive). */
export interface TftpOption {
  name: string;
  value: string;
}

export interface RequestPacket {
  op: 'RRQ' | 'WRQ';
  filename: string;
  /** Lowercased transfer mode: 'octet', 'netascii', 'mail', ... */
  mode: string;
  /** Options in wire order, first occurrence of each name only. */
  options: TftpOption[];
}
export interface DataPacket {
  op: 'DATA';
  block: number;
  data: Buffer;
}
export interface AckPacket {
  op: 'ACK';
  block: number;
}
export interface ErrorPacket {
  op: 'ERROR';
  code: number;
  message: string;
}
export interface OackPacket {
  op: 'OACK';
  options: TftpOption[];
}
export type TftpPacket = RequestPacket | DataPacket | AckPacket | ErrorPacket | OackPacket;

export type ParseErrorKind = 'truncated' | 'unknown-opcode' | 'unterminated-string' | 'empty-filename' | 'trailing-bytes';

export interface ParseError {
  kind: ParseErrorKind;
  message: string;
}

export type ParseResult = { ok: true; packet: TftpPacket } | { ok: false; error: ParseError };

const fail = (kind: ParseErrorKind, message: string): ParseResult => ({ ok: false, error: { kind, message } });

/** Splits a run of NUL-terminated strings; null if the last one lacks its terminator. */
function splitStrings(buf: Buffer, start: number): string[] | null {
  const out: string[] = [];
  let pos = start;
  while (pos < buf.length) {
    const end = buf.indexOf(0, pos);
    if (end < 0) return null;
    out.push(buf.toString('latin1', pos, end));
    pos = end + 1;
  }
  return out;
}

/** Options after the mode: name/value pairs. Empty names (padding NULs some ROMs add) and an
 * unpaired trailing name are ignored; a repeated name keeps its first value. */
function pairOptions(strings: string[]): TftpOption[] {
  const options: TftpOption[] = [];
  const seen = new Set<string>();
  for (let i = 0; i + 1 < strings.length; i += 2) {
    const name = strings[i]!;
    const value = strings[i + 1]!;
    if (name === '') continue;
    const key = name.toLowerCase();
    if (seen.has(key)) continue;
    seen.add(key);
    options.push({ name, value });
  }
  return options;
}

export function parsePacket(buf: Buffer): ParseResult {
  if (buf.length < 2) return fail('truncated', `packet of ${buf.length} bytes has no opcode`);
  const opcode = buf.readUInt16BE(0);
  switch (opcode) {
    case Opcode.RRQ:
    case Opcode.WRQ: {
      const strings = splitStrings(buf, 2);
      if (strings === null) return fail('unterminated-string', 'request string not NUL-terminated');
      if (strings.length < 2) return fail('truncated', 'request lacks filename or mode');
      const [filename, mode] = strings as [string, string];
      if (filename === '') return fail('empty-filename', 'request has an empty filename');
      return {
        ok: true,
        packet: { op: opcode === Opcode.RRQ ? 'RRQ' : 'WRQ', filename, mode: mode.toLowerCase(), options: pairOptions(strings.slice(2)) },
      };
    }
    case Opcode.DATA:
      if (buf.length < 4) return fail('truncated', 'DATA shorter than 4 bytes');
      return { ok: true, packet: { op: 'DATA', block: buf.readUInt16BE(2), data: buf.subarray(4) } };
    case Opcode.ACK:
      if (buf.length < 4) return fail('truncated', 'ACK shorter than 4 bytes');
      // Some clients pad ACKs; the RFC says 4 bytes, extra bytes are harmless and ignored.
      return { ok: true, packet: { op: 'ACK', block: buf.readUInt16BE(2) } };
    case Opcode.ERROR: {
      if (buf.length < 4) return fail('truncated', 'ERROR shorter than 4 bytes');
      const code = buf.readUInt16BE(2);
      // A missing terminator is tolerated: the message is informational only.
      const end = buf.indexOf(0, 4);
      const message = buf.toString('latin1', 4, end < 0 ? buf.length : end);
      return { ok: true, packet: { op: 'ERROR', code, message } };
    }
    case Opcode.OACK: {
      const strings = splitStrings(buf, 2);
      if (strings === null) return fail('unterminated-string', 'OACK string not NUL-terminated');
      return { ok: true, packet: { op: 'OACK', options: pairOptions(strings) } };
    }
    default:
      return fail('unknown-opcode', `unknown opcode ${opcode}`);
  }
}

function header(opcode: number, second: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt16BE(opcode, 0);
  b.writeUInt16BE(second & 0xffff, 2);
  return b;
}

function strings(values: string[]): Buffer {
  return Buffer.concat(values.flatMap((v) => [Buffer.from(v, 'latin1'), Buffer.alloc(1)]));
}

export function serializePacket(packet: TftpPacket): Buffer {
  switch (packet.op) {
    case 'RRQ':
    case 'WRQ': {
      const op = Buffer.alloc(2);
      op.writeUInt16BE(packet.op === 'RRQ' ? Opcode.RRQ : Opcode.WRQ, 0);
      return Buffer.concat([op, strings([packet.filename, packet.mode, ...packet.options.flatMap((o) => [o.name, o.value])])]);
    }
    case 'DATA':
      return Buffer.concat([header(Opcode.DATA, packet.block), packet.data]);
    case 'ACK':
      return header(Opcode.ACK, packet.block);
    case 'ERROR':
      return Buffer.concat([header(Opcode.ERROR, packet.code), strings([packet.message])]);
    case 'OACK': {
      const op = Buffer.alloc(2);
      op.writeUInt16BE(Opcode.OACK, 0);
      return Buffer.concat([op, strings(packet.options.flatMap((o) => [o.name, o.value]))]);
    }
  }
}

/** Writes a DATA header in front of `payload` already placed at offset 4 of `packet`. Avoids a copy
 * on the hot path: the sender reads file bytes straight into the packet buffer. */
export function writeDataHeader(packet: Buffer, block: number): Buffer {
  packet.writeUInt16BE(Opcode.DATA, 0);
  packet.writeUInt16BE(block & 0xffff, 2);
  return packet;
}

export function errorPacket(code: number, message: string): Buffer {
  return serializePacket({ op: 'ERROR', code, message });
}
