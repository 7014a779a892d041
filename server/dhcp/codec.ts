import { macFromBytes } from '../config/mac.ts';

/**
 * DHCP (RFC 2131/2132) messages as bytes <-> a typed message. Options are kept as the ordered
 * list of instances they arrived in (unknown ones byte for byte); the accessors below read the
 * common ones, joining repeated instances as RFC 3396 says. Decoding never throws: a malformed
 * packet comes back as a DecodeError naming what is wrong.
 */

export const MessageType = {
  DISCOVER: 1,
  OFFER: 2,
  REQUEST: 3,
  DECLINE: 4,
  ACK: 5,
  NAK: 6,
  RELEASE: 7,
  INFORM: 8,
} as const;
export type MessageTypeName = keyof typeof MessageType;

export function messageTypeName(type: number | undefined): MessageTypeName | 'UNKNOWN' {
  const entry = Object.entries(MessageType).find(([, value]) => value === type);
  return entry ? (entry[0] as MessageTypeName) : 'UNKNOWN';
}

export const Opt = {
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  DNS: 6,
  HOSTNAME: 12,
  DOMAIN: 15,
  VENDOR: 43,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAMETER_LIST: 55,
  MESSAGE: 56,
  MAX_SIZE: 57,
  RENEWAL_TIME: 58,
  REBINDING_TIME: 59,
  VENDOR_CLASS: 60,
  CLIENT_ID: 61,
  TFTP_SERVER: 66,
  BOOTFILE: 67,
  USER_CLASS: 77,
  RELAY_AGENT: 82,
  CLIENT_ARCH: 93,
  CLIENT_NDI: 94,
  CLIENT_UUID: 97,
  IPXE: 175,
  END: 255,
} as const;

export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;
export const BROADCAST_FLAG = 0x8000;
const MAGIC = 0x63825363;
const HEADER_LENGTH = 236;
/** BOOTP's minimum message size; some PXE ROMs drop shorter replies. */
const MIN_REPLY_LENGTH = 300;

/**
 * Bounds on the work one datagram can cost. A client sends at most what fits an Ethernet frame (RFC 2131 asks
 * clients to take 576 bytes; larger ones are negotiated with option 57 and still fit 1500), and a real request
 * carries a few dozen options. A 64 KiB datagram of 32,000 empty options would otherwise cost ~150x a normal
 * packet (one Buffer per option, then every accessor scanning all of them).
 */
export const DECODE_LIMITS = {
  /** Longer datagrams are refused before any parsing ('too-long'). */
  maxMessageBytes: 1500,
  /** Option instances in the whole message, overloaded fields included ('too-many-options'). */
  maxOptions: 255,
} as const;

/** Filled by decodeMessage when given: the work it did (for tests and metrics). */
export interface DecodeStats {
  /** Option instances read (PAD not counted). */
  optionsRead: number;
  /** Option areas walked: 1, plus file and/or sname when option 52 overloads them. */
  areasRead: number;
}

export interface DhcpOption {
  code: number;
  data: Buffer;
}

export interface DhcpMessage {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** 16 bytes, the hardware address in the first hlen. */
  chaddr: Buffer;
  /** Server host name; '' when the field carried options (overload). */
  sname: string;
  /** Boot file name; '' when the field carried options (overload). */
  file: string;
  /** Every option instance in order: the options field, then `file`, then `sname` when overloaded. */
  options: DhcpOption[];
}

export type DecodeErrorReason =
  | 'too-short'
  | 'bad-magic'
  | 'bad-op'
  | 'option-overrun'
  | 'bad-overload'
  | 'too-long'
  | 'too-many-options';

export interface DecodeError {
  reason: DecodeErrorReason;
  detail: string;
}

export type DecodeResult = { ok: true; message: DhcpMessage } | { ok: false; error: DecodeError };

function fail(reason: DecodeErrorReason, detail: string): DecodeResult {
  return { ok: false, error: { reason, detail } };
}

function ipAt(buf: Buffer, offset: number): string {
  return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`;
}

/** NUL-terminated latin1 text (sname/file). */
function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end === -1 ? buf.length : end).toString('latin1');
}

type OptionsResult = { ok: true } | { ok: false; reason: 'option-overrun' | 'too-many-options'; detail: string };

/**
 * Reads options up to END (or the end of the area) into `options`. PAD is skipped, unknown codes kept.
 * Stops with an error once `options` would exceed DECODE_LIMITS.maxOptions.
 */
function readOptions(area: Buffer, where: string, options: DhcpOption[], stats: DecodeStats): OptionsResult {
  stats.areasRead++;
  let i = 0;
  while (i < area.length) {
    const code = area[i]!;
    if (code === Opt.END) break;
    if (code === Opt.PAD) {
      i++;
      continue;
    }
    if (i + 1 >= area.length) return { ok: false, reason: 'option-overrun', detail: `option ${code} in ${where} has no length byte` };
    const length = area[i + 1]!;
    if (i + 2 + length > area.length) {
      return { ok: false, reason: 'option-overrun', detail: `option ${code} in ${where} claims ${length} bytes, only ${area.length - i - 2} left` };
    }
    if (options.length >= DECODE_LIMITS.maxOptions) {
      return { ok: false, reason: 'too-many-options', detail: `more than ${DECODE_LIMITS.maxOptions} options (the limit), at ${where} offset ${i}` };
    }
    stats.optionsRead++;
    options.push({ code, data: Buffer.from(area.subarray(i + 2, i + 2 + length)) });
    i += 2 + length;
  }
  return { ok: true };
}

export function decodeMessage(packet: Buffer, stats: DecodeStats = { optionsRead: 0, areasRead: 0 }): DecodeResult {
  if (packet.length < HEADER_LENGTH + 4) return fail('too-short', `${packet.length} bytes, a DHCP message has at least ${HEADER_LENGTH + 4}`);
  if (packet.length > DECODE_LIMITS.maxMessageBytes) {
    return fail('too-long', `${packet.length} bytes, more than the ${DECODE_LIMITS.maxMessageBytes} a DHCP message fits in one Ethernet frame`);
  }
  if (packet.readUInt32BE(HEADER_LENGTH) !== MAGIC) return fail('bad-magic', 'no DHCP magic cookie (plain BOOTP is not served)');
  const op = packet[0]!;
  if (op !== BOOTREQUEST && op !== BOOTREPLY) return fail('bad-op', `op ${op} is neither BOOTREQUEST nor BOOTREPLY`);

  const options: DhcpOption[] = [];
  const main = readOptions(packet.subarray(HEADER_LENGTH + 4), 'options', options, stats);
  if (!main.ok) return fail(main.reason, main.detail);
  const snameField = packet.subarray(44, 108);
  const fileField = packet.subarray(108, 236);
  let sname = cString(snameField);
  let file = cString(fileField);

  // Only option 52 of the options field counts, and it is acted on once: a 52 inside file or sname is kept as
  // data, never followed (RFC 2131 4.1 puts it in the options field).
  const overload = options.find((o) => o.code === Opt.OVERLOAD);
  if (overload) {
    const value = overload.data.length === 1 ? overload.data[0]! : -1;
    if (value < 1 || value > 3) return fail('bad-overload', `option 52 must be one byte 1, 2 or 3 (got ${overload.data.toString('hex') || 'nothing'})`);
    // RFC 2131 4.1: the options field first, then `file`, then `sname`.
    if (value & 1) {
      const fromFile = readOptions(fileField, 'file (overload)', options, stats);
      if (!fromFile.ok) return fail(fromFile.reason, fromFile.detail);
      file = '';
    }
    if (value & 2) {
      const fromSname = readOptions(snameField, 'sname (overload)', options, stats);
      if (!fromSname.ok) return fail(fromSname.reason, fromSname.detail);
      sname = '';
    }
  }

  return {
    ok: true,
    message: {
      op,
      htype: packet[1]!,
      hlen: packet[2]!,
      hops: packet[3]!,
      xid: packet.readUInt32BE(4),
      secs: packet.readUInt16BE(8),
      flags: packet.readUInt16BE(10),
      ciaddr: ipAt(packet, 12),
      yiaddr: ipAt(packet, 16),
      siaddr: ipAt(packet, 20),
      giaddr: ipAt(packet, 24),
      chaddr: Buffer.from(packet.subarray(28, 44)),
      sname,
      file,
      options,
    },
  };
}

function writeIp(buf: Buffer, offset: number, ip: string): void {
  const parts = ip.split('.').map(Number);
  for (let i = 0; i < 4; i++) buf[offset + i] = parts[i] ?? 0;
}

/**
 * Message -> bytes. Options longer than 255 bytes are split into several instances (RFC 3396);
 * sname/file longer than their fields are an error of the caller, so they throw.
 */
export function encodeMessage(message: DhcpMessage): Buffer {
  const header = Buffer.alloc(HEADER_LENGTH + 4);
  header[0] = message.op;
  header[1] = message.htype;
  header[2] = message.hlen;
  header[3] = message.hops;
  header.writeUInt32BE(message.xid >>> 0, 4);
  header.writeUInt16BE(message.secs & 0xffff, 8);
  header.writeUInt16BE(message.flags & 0xffff, 10);
  writeIp(header, 12, message.ciaddr);
  writeIp(header, 16, message.yiaddr);
  writeIp(header, 20, message.siaddr);
  writeIp(header, 24, message.giaddr);
  message.chaddr.copy(header, 28, 0, Math.min(16, message.chaddr.length));
  const sname = Buffer.from(message.sname, 'latin1');
  const file = Buffer.from(message.file, 'latin1');
  if (sname.length > 63) throw new RangeError(`sname is ${sname.length} bytes, the field holds 63`);
  if (file.length > 127) throw new RangeError(`file is ${file.length} bytes, the field holds 127`);
  sname.copy(header, 44);
  file.copy(header, 108);
  header.writeUInt32BE(MAGIC, HEADER_LENGTH);

  const parts: Buffer[] = [header];
  for (const option of message.options) {
    if (option.code === Opt.PAD || option.code === Opt.END) continue;
    let rest = option.data;
    do {
      const chunk = rest.subarray(0, 255);
      parts.push(Buffer.from([option.code, chunk.length]), chunk);
      rest = rest.subarray(chunk.length);
    } while (rest.length > 0);
  }
  parts.push(Buffer.from([Opt.END]));
  const body = Buffer.concat(parts);
  return body.length >= MIN_REPLY_LENGTH ? body : Buffer.concat([body, Buffer.alloc(MIN_REPLY_LENGTH - body.length)]);
}

// ---- option builders -------------------------------------------------------------------

export function option(code: number, data: Buffer | Uint8Array | number[]): DhcpOption {
  return { code, data: Buffer.from(data as Uint8Array) };
}
export function u8Option(code: number, value: number): DhcpOption {
  return option(code, [value & 0xff]);
}
export function u32Option(code: number, value: number): DhcpOption {
  const data = Buffer.alloc(4);
  data.writeUInt32BE(value >>> 0);
  return { code, data };
}
export function ipOption(code: number, ...ips: string[]): DhcpOption {
  const data = Buffer.alloc(4 * ips.length);
  ips.forEach((ip, i) => writeIp(data, 4 * i, ip));
  return { code, data };
}
export function textOption(code: number, text: string): DhcpOption {
  return { code, data: Buffer.from(text, 'latin1') };
}
/** Encapsulated sub-options (43, 82, 175): code, length, data each; no END. */
export function encodeSubOptions(subs: DhcpOption[]): Buffer {
  return Buffer.concat(subs.flatMap((s) => [Buffer.from([s.code, s.data.length]), s.data]));
}

// ---- accessors --------------------------------------------------------------------------

/** All instances of `code` joined (RFC 3396), or undefined when absent. */
export function getOption(message: DhcpMessage, code: number): Buffer | undefined {
  const found = message.options.filter((o) => o.code === code);
  if (found.length === 0) return undefined;
  return found.length === 1 ? found[0]!.data : Buffer.concat(found.map((o) => o.data));
}

export function messageType(message: DhcpMessage): number | undefined {
  const data = getOption(message, Opt.MESSAGE_TYPE);
  return data?.length === 1 ? data[0] : undefined;
}

function ipOf(data: Buffer | undefined): string | undefined {
  return data?.length === 4 ? ipAt(data, 0) : undefined;
}
function u32Of(data: Buffer | undefined): number | undefined {
  return data?.length === 4 ? data.readUInt32BE(0) : undefined;
}

export const requestedIp = (m: DhcpMessage) => ipOf(getOption(m, Opt.REQUESTED_IP));
export const leaseTime = (m: DhcpMessage) => u32Of(getOption(m, Opt.LEASE_TIME));
export const serverId = (m: DhcpMessage) => ipOf(getOption(m, Opt.SERVER_ID));

export function parameterList(m: DhcpMessage): number[] {
  return [...(getOption(m, Opt.PARAMETER_LIST) ?? [])];
}

export function maxMessageSize(m: DhcpMessage): number | undefined {
  const data = getOption(m, Opt.MAX_SIZE);
  return data?.length === 2 ? data.readUInt16BE(0) : undefined;
}

export function vendorClass(m: DhcpMessage): string | undefined {
  return getOption(m, Opt.VENDOR_CLASS)?.toString('latin1');
}

export const clientId = (m: DhcpMessage) => getOption(m, Opt.CLIENT_ID);
export const tftpServerName = (m: DhcpMessage) => getOption(m, Opt.TFTP_SERVER)?.toString('latin1');
export const bootfileName = (m: DhcpMessage) => getOption(m, Opt.BOOTFILE)?.toString('latin1');

/**
 * Option 77. RFC 3004 says length-prefixed class names; iPXE (and some others) send a plain
 * string ("iPXE"). A value that parses exactly as RFC 3004 items is read so, else as one string.
 */
export function userClass(m: DhcpMessage): string[] {
  const data = getOption(m, Opt.USER_CLASS);
  if (!data || data.length === 0) return [];
  const items: string[] = [];
  let i = 0;
  while (i < data.length) {
    const length = data[i]!;
    if (length === 0 || i + 1 + length > data.length) return [data.toString('latin1')];
    items.push(data.subarray(i + 1, i + 1 + length).toString('latin1'));
    i += 1 + length;
  }
  return items;
}

/** Sub-options of an encapsulating option (43, 82, 175); undefined when they do not parse. */
export function decodeSubOptions(data: Buffer): DhcpOption[] | undefined {
  const subs: DhcpOption[] = [];
  let i = 0;
  while (i < data.length) {
    const code = data[i]!;
    if (code === Opt.END) break;
    if (code === Opt.PAD) {
      i++;
      continue;
    }
    if (i + 1 >= data.length) return undefined;
    const length = data[i + 1]!;
    if (i + 2 + length > data.length) return undefined;
    subs.push({ code, data: Buffer.from(data.subarray(i + 2, i + 2 + length)) });
    i += 2 + length;
  }
  return subs;
}

export function relayAgent(m: DhcpMessage): DhcpOption[] | undefined {
  const data = getOption(m, Opt.RELAY_AGENT);
  return data ? decodeSubOptions(data) : undefined;
}

/** Option 93 (RFC 4578): a list of 16-bit architecture types; [] when absent or odd-sized. */
export function clientArch(m: DhcpMessage): number[] {
  const data = getOption(m, Opt.CLIENT_ARCH);
  if (!data || data.length === 0 || data.length % 2 !== 0) return [];
  const arches: number[] = [];
  for (let i = 0; i < data.length; i += 2) arches.push(data.readUInt16BE(i));
  return arches;
}

/** Option 94: network interface identifier (type 1 = UNDI, with its version). */
export function clientNdi(m: DhcpMessage): { type: number; major: number; minor: number } | undefined {
  const data = getOption(m, Opt.CLIENT_NDI);
  return data?.length === 3 ? { type: data[0]!, major: data[1]!, minor: data[2]! } : undefined;
}

/**
 * Option 97: type 0 then a 16-byte UUID. Firmware (EDK2, iPXE) sends the SMBIOS byte order,
 * whose first three fields are little-endian; `text` is the usual 8-4-4-4-12 form as dmidecode
 * and QEMU's -uuid show it.
 */
export function clientUuid(m: DhcpMessage): { type: number; bytes: Buffer; text: string } | undefined {
  const data = getOption(m, Opt.CLIENT_UUID);
  if (!data || data.length !== 17) return undefined;
  const bytes = Buffer.from(data.subarray(1));
  const hex = (from: number, to: number, swap: boolean) => {
    const part = Buffer.from(bytes.subarray(from, to));
    return (swap ? part.reverse() : part).toString('hex');
  };
  const text = `${hex(0, 4, true)}-${hex(4, 6, true)}-${hex(6, 8, true)}-${hex(8, 10, false)}-${hex(10, 16, false)}`;
  return { type: data[0]!, bytes, text };
}

/** PXE vendor sub-option 6: discovery control bits. */
export const PXE_DISCOVERY_CONTROL = 6;
/** Discovery control: bit 3 = download the boot file named in the offer, no boot server discovery/menu. */
export const PXE_BOOT_FROM_FILE = 8;

export function pxeVendorOptions(m: DhcpMessage): DhcpOption[] | undefined {
  const data = getOption(m, Opt.VENDOR);
  return data ? decodeSubOptions(data) : undefined;
}

export function pxeDiscoveryControl(m: DhcpMessage): number | undefined {
  const sub = pxeVendorOptions(m)?.find((s) => s.code === PXE_DISCOVERY_CONTROL);
  return sub?.data.length === 1 ? sub.data[0] : undefined;
}

/** iPXE's encapsulated options (175): e.g. 176 no-ProxyDHCP, 177 ... */
export function ipxeOptions(m: DhcpMessage): DhcpOption[] | undefined {
  const data = getOption(m, Opt.IPXE);
  return data ? decodeSubOptions(data) : undefined;
}
export const IPXE_NO_PROXYDHCP = 176;

/** Canonical MAC of an Ethernet client; undefined for other hardware types. */
export function clientMac(m: DhcpMessage): string | undefined {
  return m.htype === 1 && m.hlen === 6 ? macFromBytes(m.chaddr) : undefined;
}
