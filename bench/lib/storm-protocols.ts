/**
 * The client side of each protocol a booting machine speaks, as bench/storm's simulated
 * machines speak it: DHCP as UEFI PXE firmware and as iPXE, TFTP in lockstep as firmware
 * does, HTTP as iPXE and /init do (503 + Retry-After honoured), NBD as the kernel's client.
 * Packets are built and parsed with netboot's own codecs.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodeMessage, encodeMessage, ipOption, MessageType, messageType, Opt, option, type DhcpMessage } from '../../server/dhcp/codec.ts';
import { Cmd, IHAVEOPT, NBDMAGIC, Opt as NbdOpt, REQUEST_MAGIC, Rep, SIMPLE_REPLY_MAGIC } from '../../server/nbd/codec.ts';
import { parsePacket, serializePacket } from '../../server/tftp/codec.ts';

const FIXTURES = join(import.meta.dirname, '../../test/dhcp/fixtures');

function template(file: string): DhcpMessage {
  const decoded = decodeMessage(readFileSync(join(FIXTURES, file)));
  if (!decoded.ok) throw new Error(`${file}: ${decoded.error.detail}`);
  return decoded.message;
}

/** OVMF's PXE DISCOVER (arch 7, broadcast flag) and iPXE's (user class "iPXE", client id). */
const FIRMWARE = template('ovmf-pxe-discover.bin');
const IPXE = template('ipxe-bios-discover.bin');

export type DhcpClientKind = 'firmware' | 'ipxe';

/** Retransmission schedules (seconds): EDK2's PXE DHCP (4, 8, 16, 32) and iPXE's (1, 2, 4, 8, then gives up). */
const SCHEDULE: Record<DhcpClientKind, number[]> = { firmware: [4, 8, 16, 32], ipxe: [1, 2, 4, 8, 16] };

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.replace(/:/g, ''), 'hex');
}

/** A DHCP DISCOVER or REQUEST as `kind` sends it, for `mac`. */
export function dhcpPacket(kind: DhcpClientKind, mac: string, xid: number, request?: { ip: string; server: string }): Buffer {
  const base = kind === 'firmware' ? FIRMWARE : IPXE;
  const hw = macBytes(mac);
  const chaddr = Buffer.alloc(16);
  hw.copy(chaddr);
  const options = base.options
    .filter((o) => o.code !== Opt.MESSAGE_TYPE)
    .map((o) => {
      if (o.code === 61) return option(61, [1, ...hw]); // client id: type 1 + MAC
      if (o.code === 97) return option(97, Buffer.concat([o.data.subarray(0, 11), hw])); // machine UUID: unique per MAC
      if (kind === 'ipxe' && o.code === 93) return option(93, [0, 7]); // snponly.efi is an x86-64 UEFI iPXE
      if (kind === 'ipxe' && o.code === 60) return option(60, Buffer.from('PXEClient:Arch:00007:UNDI:003010'));
      return o;
    });
  const type = request ? MessageType.REQUEST : MessageType.DISCOVER;
  const extra = request ? [ipOption(50, request.ip), ipOption(54, request.server)] : [];
  return encodeMessage({ ...base, xid, secs: 0, chaddr, options: [option(Opt.MESSAGE_TYPE, [type]), ...extra, ...options] });
}

/** One UDP socket on port 68 shared by every simulated machine; replies are matched by xid. */
export class DhcpMux {
  readonly #socket: UdpSocket;
  readonly #waiters = new Map<number, (m: DhcpMessage) => void>();
  retransmits = 0;

  private constructor(socket: UdpSocket) {
    this.#socket = socket;
    socket.on('message', (bytes) => {
      const d = decodeMessage(bytes);
      if (d.ok && d.message.op === 2) this.#waiters.get(d.message.xid)?.(d.message);
    });
  }

  static async open(): Promise<DhcpMux> {
    const socket = createSocket({ type: 'udp4', reuseAddr: true, recvBufferSize: 8 << 20 });
    await new Promise<void>((resolve) => socket.bind(68, '0.0.0.0', resolve));
    socket.setBroadcast(true);
    return new DhcpMux(socket);
  }

  close(): void {
    this.#socket.close();
  }

  /** Sends and retransmits on the client's schedule until a reply of `wantType` for `xid` comes (null: gave up). */
  async exchange(kind: DhcpClientKind, packet: Buffer, xid: number, wantType: number): Promise<DhcpMessage | null> {
    const schedule = SCHEDULE[kind];
    try {
      for (let i = 0; i < schedule.length; i++) {
        if (i > 0) this.retransmits++;
        const reply = await new Promise<DhcpMessage | null>((resolve) => {
          const timer = setTimeout(() => resolve(null), schedule[i]! * 1000);
          this.#waiters.set(xid, (m) => {
            const type = messageType(m);
            if (type === wantType || type === MessageType.NAK) {
              clearTimeout(timer);
              resolve(m);
            }
          });
          this.#socket.send(packet, 67, '255.255.255.255');
        });
        if (reply) return reply;
      }
      return null;
    } finally {
      this.#waiters.delete(xid);
    }
  }
}

export interface Lease {
  ip: string;
  server: string;
  bootfile: string;
}

/** DISCOVER -> OFFER -> REQUEST -> ACK. Throws with the reason on failure. */
export async function dhcpBoot(mux: DhcpMux, kind: DhcpClientKind, mac: string, xid: number): Promise<Lease> {
  const offer = await mux.exchange(kind, dhcpPacket(kind, mac, xid), xid, MessageType.OFFER);
  if (!offer || messageType(offer) !== MessageType.OFFER) throw new Error(`${kind} DHCP: no OFFER`);
  const serverIdOption = offer.options.find((o) => o.code === 54)?.data;
  const server = serverIdOption ? [...serverIdOption].join('.') : offer.siaddr;
  const ack = await mux.exchange(kind, dhcpPacket(kind, mac, xid, { ip: offer.yiaddr, server }), xid, MessageType.ACK);
  if (!ack || messageType(ack) !== MessageType.ACK) throw new Error(`${kind} DHCP: ${ack ? 'NAK' : 'no ACK'} for ${offer.yiaddr}`);
  const bootOption = ack.options.find((o) => o.code === 67)?.data.toString('latin1').replace(/\0+$/, '');
  const bootfile = bootOption || ack.file;
  if (!bootfile) throw new Error(`${kind} DHCP: the ACK names no boot file`);
  return { ip: ack.yiaddr, server: ack.siaddr !== '0.0.0.0' && kind === 'firmware' ? ack.siaddr : server, bootfile };
}

/** EDK2's PXE TFTP: 4 s per packet, 6 tries. */
const TFTP_TIMEOUT_MS = 4000;
const TFTP_TRIES = 6;
/** The block size OVMF asks for. */
export const FIRMWARE_BLKSIZE = 1468;

/**
 * A TFTP download as UEFI PXE firmware does it: first a size probe (RRQ with tsize, aborted
 * with ERROR 8 after the OACK), then the real RRQ, in lockstep (one block in flight), from the
 * machine's own address. Returns the bytes received; throws on an ERROR or after the retries.
 */
export async function tftpFirmwareGet(localIp: string, server: string, file: string, counters: { retransmits: number }): Promise<number> {
  const blksize = String(FIRMWARE_BLKSIZE);
  // EDK2 opens a new UDP port for each operation: the probe and the download are separate transfers.
  const probe = await TftpPort.open(localIp, server);
  try {
    const rrq = serializePacket({ op: 'RRQ', filename: file, mode: 'octet', options: [{ name: 'tsize', value: '0' }, { name: 'blksize', value: blksize }] });
    const port = await probe.transact(rrq, 69, file, counters, (p, from) => (p.ok && p.packet.op === 'OACK' ? from : null));
    await probe.send(serializePacket({ op: 'ERROR', code: 8, message: 'size probe' }), port);
  } finally {
    probe.close();
  }
  const tftp = await TftpPort.open(localIp, server);
  try {
    const rrq = serializePacket({ op: 'RRQ', filename: file, mode: 'octet', options: [{ name: 'blksize', value: blksize }] });
    const { port, size } = await tftp.transact(rrq, 69, file, counters, (p, from) =>
      p.ok && p.packet.op === 'OACK' ? { port: from, size: Number(p.packet.options.find((o) => o.name.toLowerCase() === 'blksize')?.value ?? 512) } : null,
    );
    let bytes = 0;
    let block = 0;
    for (;;) {
      const data = await tftp.transact(serializePacket({ op: 'ACK', block }), port, file, counters, (p, from) => {
        if (from !== port || !p.ok || p.packet.op !== 'DATA' || p.packet.block !== ((block + 1) & 0xffff)) return null;
        return p.packet.data;
      });
      block = (block + 1) & 0xffff;
      bytes += data.length;
      if (data.length < size) {
        await tftp.send(serializePacket({ op: 'ACK', block }), port);
        return bytes;
      }
    }
  } finally {
    tftp.close();
  }
}

/** One client UDP port talking to a TFTP server: send, and wait for the reply a predicate takes (resending on timeout). */
class TftpPort {
  readonly #inbox: { bytes: Buffer; port: number }[] = [];
  #wake: (() => void) | null = null;

  private constructor(
    private readonly socket: UdpSocket,
    private readonly server: string,
  ) {
    socket.on('message', (bytes, rinfo) => {
      if (rinfo.address !== server) return;
      this.#inbox.push({ bytes, port: rinfo.port });
      this.#wake?.();
    });
  }

  static async open(localIp: string, server: string): Promise<TftpPort> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, localIp, () => resolve());
    });
    return new TftpPort(socket, server);
  }

  send(packet: Buffer, port: number): Promise<void> {
    return new Promise((resolve, reject) => this.socket.send(packet, port, this.server, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    this.socket.close();
  }

  async #next(timeoutMs: number): Promise<{ bytes: Buffer; port: number } | null> {
    if (this.#inbox.length === 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
    return this.#inbox.shift() ?? null;
  }

  async transact<T>(packet: Buffer, port: number, file: string, counters: { retransmits: number }, accept: (p: ReturnType<typeof parsePacket>, port: number) => T | null): Promise<T> {
    for (let attempt = 0; attempt < TFTP_TRIES; attempt++) {
      if (attempt > 0) counters.retransmits++;
      await this.send(packet, port);
      const deadline = Date.now() + TFTP_TIMEOUT_MS;
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        const got = await this.#next(left);
        if (!got) break;
        const parsed = parsePacket(got.bytes);
        if (parsed.ok && parsed.packet.op === 'ERROR') throw new Error(`TFTP ${file}: ERROR ${parsed.packet.code} ${parsed.packet.message}`);
        const value = accept(parsed, got.port);
        if (value !== null) return value;
      }
    }
    throw new Error(`TFTP ${file}: no answer after ${TFTP_TRIES} tries`);
  }
}

/** What a machine's HTTP requests have waited and retried. */
export interface HttpCounters {
  /** 503 + Retry-After answers (admission control): waits, not failures. */
  waits: number;
  waitMs: number;
  /** Other failed attempts that were retried. */
  retries: number;
}

export interface HttpOptions {
  localAddress: string;
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  /** Keep the body (scripts); big bodies are only counted. */
  keepBody?: boolean;
  /** Attempts after a failure that is not a 503 (iPXE's script retries the kernel 3 times; /init's download 5). */
  tries?: number;
  /** 0..1, per machine and attempt: the jitter added to Retry-After. */
  jitter: () => number;
  counters: HttpCounters;
  /** Give up waiting for anything after this long without a byte. */
  idleTimeoutMs?: number;
  /** Filled for the attempt that succeeds: performance.now() at its response headers and at its body's end, and the body's reads (chunks). */
  timing?: { headersAt: number; endAt: number; reads: number };
  /** Keeps the connection for the next request (iPXE's connection pool); without it every request has a connection of its own, as /init's wget does. */
  agent?: Agent;
}

const RETRY_DELAY_MS = 2000;

function once(url: string, o: HttpOptions): Promise<{ status: number; retryAfter: number | null; bytes: number; length: number | null; body: string; headersAt: number; endAt: number; reads: number }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: o.method ?? 'GET', headers: o.headers, localAddress: o.localAddress, agent: o.agent ?? false }, (res) => {
      const headersAt = performance.now();
      let bytes = 0;
      let reads = 0;
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        reads++;
        if (o.keepBody) chunks.push(chunk);
      });
      res.on('end', () => {
        const retryAfter = res.headers['retry-after'] === undefined ? null : Number(res.headers['retry-after']);
        const length = res.headers['content-length'] === undefined ? null : Number(res.headers['content-length']);
        resolve({ status: res.statusCode ?? 0, retryAfter: Number.isFinite(retryAfter) ? retryAfter : null, bytes, length, body: Buffer.concat(chunks).toString('utf8'), headersAt, endAt: performance.now(), reads });
      });
      res.on('error', reject);
    });
    req.setTimeout(o.idleTimeoutMs ?? 120_000, () => req.destroy(new Error(`no data for ${(o.idleTimeoutMs ?? 120_000) / 1000} s`)));
    req.on('error', reject);
    req.end(o.body);
  });
}

/** One HTTP request as the machine's software does it: 503 + Retry-After waits (with jitter), other failures retry. */
export async function httpFetch(url: string, o: HttpOptions): Promise<{ bytes: number; body: string }> {
  const tries = o.tries ?? 3;
  let failures = 0;
  for (;;) {
    let why: string;
    try {
      const r = await once(url, o);
      if (r.status >= 200 && r.status < 300 && (r.length === null || r.length === r.bytes)) {
        if (o.timing) Object.assign(o.timing, { headersAt: r.headersAt, endAt: r.endAt, reads: r.reads });
        return r;
      }
      if (r.status === 503 && r.retryAfter !== null) {
        const ms = r.retryAfter * 1000 * (1 + 0.5 * o.jitter());
        o.counters.waits++;
        o.counters.waitMs += ms;
        await sleep(ms);
        continue;
      }
      why = r.status >= 200 && r.status < 300 ? `short body: ${r.bytes} of ${r.length} bytes` : `HTTP ${r.status}`;
    } catch (err) {
      why = (err as Error).message;
    }
    failures++;
    if (failures >= tries) throw new Error(`${o.method ?? 'GET'} ${url.replace(/sig=[^&]+/, 'sig=…')}: ${why} (${failures} tries)`);
    o.counters.retries++;
    await sleep(RETRY_DELAY_MS);
  }
}

/** Buffered exact-length reads from a socket. */
class Reader {
  #chunks: Buffer[] = [];
  #have = 0;
  #wake: (() => void) | null = null;
  #error: Error | null = null;

  constructor(socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.#chunks.push(c);
      this.#have += c.length;
      this.#wake?.();
    });
    const end = (err?: Error) => {
      this.#error ??= err ?? new Error('connection closed');
      this.#wake?.();
    };
    socket.on('error', end);
    socket.on('close', () => end());
  }

  /** The next `n` bytes; with `limitMs`, fails when a wait for more bytes lasts that long (a socket's SO_RCVTIMEO). */
  async read(n: number, limitMs?: number): Promise<Buffer> {
    while (this.#have < n) {
      if (this.#error) throw this.#error;
      let timer: NodeJS.Timeout | undefined;
      const arrived = await new Promise<boolean>((resolve) => {
        this.#wake = () => resolve(true);
        if (limitMs !== undefined) timer = setTimeout(() => resolve(false), limitMs);
      });
      clearTimeout(timer);
      this.#wake = null;
      if (!arrived) throw new Error(`NBD: no answer within ${(limitMs ?? 0) / 1000} s`);
    }
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    this.#chunks = all.length > n ? [all.subarray(n)] : [];
    this.#have -= n;
    return all.subarray(0, n);
  }
}

/**
 * How long netboot-nbd's handshake waits for each answer (SO_RCVTIMEO, native/nbd-client): a
 * connection an overloaded server lost from its accept queue looks established to the client,
 * and the server speaks first, so without it the machine would wait for good.
 */
export const NBD_HANDSHAKE_LIMIT_MS = 30_000;

async function nbdConnect(host: string, port: number, localAddress: string, exportName: string, limitMs: number): Promise<{ socket: Socket; reader: Reader }> {
  const socket = connect({ host, port, localAddress });
  socket.setNoDelay(true);
  const reader = new Reader(socket);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    await nbdHandshake(socket, reader, exportName, limitMs);
    return { socket, reader };
  } catch (err) {
    socket.destroy();
    throw err;
  }
}

async function nbdHandshake(socket: Socket, reader: Reader, exportName: string, limitMs: number): Promise<void> {
  const greeting = await reader.read(18, limitMs);
  if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('NBD: not a newstyle server');
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(greeting.readUInt16BE(16) & 3); // FIXED_NEWSTYLE | NO_ZEROES, as offered
  const name = Buffer.from(exportName);
  const data = Buffer.alloc(4 + name.length + 2);
  data.writeUInt32BE(name.length);
  name.copy(data, 4);
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(IHAVEOPT);
  header.writeUInt32BE(NbdOpt.GO, 8);
  header.writeUInt32BE(data.length, 12);
  socket.write(Buffer.concat([flags, header, data]));
  for (;;) {
    const reply = await reader.read(20, limitMs);
    const type = reply.readUInt32BE(12);
    const payload = await reader.read(reply.readUInt32BE(16), limitMs);
    if (type === Rep.ACK) return;
    if (type & 0x80000000) throw new Error(`NBD GO ${exportName}: error ${type.toString(16)} ${payload.toString('utf8')}`);
  }
}

/**
 * Replays a recorded read trace as the machine's kernel did, one read at a time, on as many
 * connections as the recording had. A refused, dropped or silent connection (no answer within
 * `handshakeLimitMs` during the handshake) is retried like /init (netboot-nbd: 5 `attempts`,
 * sleeping 1, 2, 3, 4 s).
 */
export async function nbdReplay(
  host: string,
  port: number,
  localAddress: string,
  exportName: string,
  reads: readonly [number, number, number][],
  counters: HttpCounters,
  { handshakeLimitMs = NBD_HANDSHAKE_LIMIT_MS, attempts = 5 }: { handshakeLimitMs?: number; attempts?: number } = {},
): Promise<number> {
  const conns = new Map<number, { socket: Socket; reader: Reader }>();
  let bytes = 0;
  let handle = 0n;
  try {
    for (const [offset, length, index] of reads) {
      for (let attempt = 1; ; attempt++) {
        try {
          let conn = conns.get(index);
          if (!conn) {
            conn = await nbdConnect(host, port, localAddress, exportName, handshakeLimitMs);
            conns.set(index, conn);
          }
          const request = Buffer.alloc(28);
          request.writeUInt32BE(REQUEST_MAGIC, 0);
          request.writeUInt16BE(Cmd.READ, 6);
          request.writeBigUInt64BE(++handle, 8);
          request.writeBigUInt64BE(BigInt(offset), 16);
          request.writeUInt32BE(length, 24);
          conn.socket.write(request);
          const reply = await conn.reader.read(16);
          if (reply.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC || reply.readBigUInt64BE(8) !== handle) throw new Error('NBD: unexpected reply');
          const error = reply.readUInt32BE(4);
          if (error !== 0) throw new Error(`NBD read ${offset}+${length}: error ${error}`);
          bytes += (await conn.reader.read(length)).length;
          break;
        } catch (err) {
          conns.get(index)?.socket.destroy();
          conns.delete(index);
          if (attempt >= attempts) throw err;
          counters.retries++;
          await sleep(attempt * 1000);
        }
      }
    }
    return bytes;
  } finally {
    for (const { socket } of conns.values()) {
      const disc = Buffer.alloc(28);
      disc.writeUInt32BE(REQUEST_MAGIC, 0);
      disc.writeUInt16BE(Cmd.DISC, 6);
      socket.end(disc);
    }
  }
}

/** `kernel [--opts] URL args...` / `initrd [--opts] URL` / `chain [--opts] URL` lines of an iPXE script. */
export function scriptCommand(script: string, command: 'kernel' | 'initrd' | 'chain'): { url: string; args: string[] } | null {
  for (const line of script.split('\n')) {
    const words = line.trim().split(/\s+/);
    if (words[0] !== command) continue;
    const urlIndex = words.findIndex((w) => /^https?:\/\//.test(w));
    if (urlIndex < 0) continue;
    const after = words.slice(urlIndex);
    const until = after.indexOf('||');
    return { url: after[0]!, args: until >= 0 ? after.slice(1, until) : after.slice(1) };
  }
  return null;
}

export interface IpxeHttpResult {
  /** ms: boot.ipxe and the per-MAC script (script), the kernel, the initrd. */
  phases: { script: number; kernel: number; initrd: number };
  /** The kernel line's arguments (the machine's command line). */
  kernelArgs: string[];
}

/**
 * What iPXE does over HTTP once it has its address: GET the boot file (boot.ipxe), the per-MAC
 * script it chains to, the kernel and the initrd, in order, on one connection: iPXE keeps its
 * HTTP connections in a pool and reuses one to the same server (src/net/tcp/httpconn.c), and
 * drops it when it boots the kernel. A failure names the phase it happened in (`phase`).
 */
export async function ipxeHttp(bootfile: string, mac: string, o: Omit<HttpOptions, 'agent' | 'keepBody' | 'tries' | 'timing'>): Promise<IpxeHttpResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  let phase: keyof IpxeHttpResult['phases'] = 'script';
  let mark = performance.now();
  const took = () => {
    const now = performance.now();
    const ms = now - mark;
    mark = now;
    return ms;
  };
  try {
    const http = { ...o, agent };
    const entry = await httpFetch(bootfile, { ...http, keepBody: true });
    const chain = scriptCommand(entry.body, 'chain');
    if (!chain) throw new Error(`${bootfile}: no chain line in ${JSON.stringify(entry.body.slice(0, 200))}`);
    const own = await httpFetch(chain.url.replace('${mac:hexhyp}', mac.replace(/:/g, '-')), { ...http, keepBody: true });
    const kernel = scriptCommand(own.body, 'kernel');
    const initrd = scriptCommand(own.body, 'initrd');
    if (!kernel || !initrd) throw new Error(`${chain.url}: no kernel/initrd lines in ${JSON.stringify(own.body.slice(0, 300))}`);
    const script = took();
    phase = 'kernel';
    await httpFetch(kernel.url, { ...http, tries: 3 });
    const kernelMs = took();
    phase = 'initrd';
    await httpFetch(initrd.url, { ...http, tries: 3 });
    return { phases: { script, kernel: kernelMs, initrd: took() }, kernelArgs: kernel.args };
  } catch (err) {
    throw Object.assign(err as Error, { phase });
  } finally {
    agent.destroy();
  }
}
