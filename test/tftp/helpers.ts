import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { parsePacket, serializePacket, type TftpPacket } from '../../server/tftp/codec.ts';

const execFileAsync = promisify(execFile);

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Runs a client program; resolves with its exit code and output, never rejects. */
export async function runClient(cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

export interface Received {
  packet: TftpPacket;
  from: RemoteInfo;
}

/** A hand-driven TFTP peer on loopback, for what no stock client does (stranger TIDs, raw requests). */
export class RawPeer {
  private readonly socket: Socket = createSocket('udp4');
  private readonly inbox: Received[] = [];
  private waiter: (() => void) | undefined;
  /** Packets from the server that did not parse (should stay empty). */
  readonly malformed: Buffer[] = [];

  /** `address`: the loopback address to send from (127.0.0.2 acts as a second host). */
  static async open(address = '127.0.0.1'): Promise<RawPeer> {
    const peer = new RawPeer();
    await new Promise<void>((resolve) => peer.socket.bind(0, address, resolve));
    peer.socket.on('message', (msg, from) => {
      const parsed = parsePacket(msg);
      if (!parsed.ok) {
        peer.malformed.push(msg);
        return;
      }
      peer.inbox.push({ packet: parsed.packet, from });
      peer.waiter?.();
    });
    return peer;
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(packet: TftpPacket | Buffer, port: number): Promise<void> {
    const bytes = Buffer.isBuffer(packet) ? packet : serializePacket(packet);
    return new Promise((resolve, reject) => this.socket.send(bytes, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
  }

  /** The next packet, or null if none arrives within `timeoutMs`. */
  async next(timeoutMs = 5000): Promise<Received | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.inbox.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    return this.inbox.shift()!;
  }

  close(): void {
    this.socket.close();
  }
}
