import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { join } from 'node:path';
import type { Config } from '../config/types.ts';
import { silentLogger, type Logger } from '../log.ts';
import { BURST_RECEIVE_BYTES, warnIfReceiveBufferCapped } from '../udp-receive-buffer.ts';
import { kernelNeighbours, type NeighbourLookup } from '../boot/neighbours.ts';
import { decodeMessage, encodeMessage, MessageType, messageType, messageTypeName, requestedIp, type DhcpMessage } from './codec.ts';
import { LeaseStore } from './leases.ts';
import { DHCP_SERVER_PORT, PXE_PORT, respond, type DhcpExchange } from './responder.ts';

export type { DhcpExchange } from './responder.ts';

const ROUTINE = new Set(['not-a-pxe-client', 'not-a-boot-client', 'for-address-server', 'other-server', 'no-record']);

export interface DhcpServerOptions {
  /** Read at every packet, so a reloaded config applies to the next one (mode, pool, machines). */
  config: () => Config;
  logger?: Logger;
  /** Called once per handled packet (replied to or deliberately ignored). */
  onExchange?: (exchange: DhcpExchange) => void;
  /** Called for every packet in and every reply out (metrics), e.g. ('DISCOVER', 'in'). */
  onPacket?: (messageType: string, direction: 'in' | 'out') => void;
  /**
   * server.bind. DHCP always listens on 0.0.0.0: a socket bound to a unicast address never
   * sees the broadcasts clients without an address send (and Node cannot bind to a device), so
   * another address only earns a warning. Confine it by running it in the right host/namespace.
   */
  bind?: string;
  /** Default 67 and 4011; tests may move them. */
  ports?: { dhcp?: number; pxe?: number };
  /** Leases file; default <config.server.stateDir>/leases.json, read at start(). */
  leaseFile?: string;
  /** The neighbour table a RELEASE or DECLINE is checked against (full mode); default the kernel's. */
  neighbours?: NeighbourLookup;
  now?: () => number;
}

/**
 * The DHCP server loop: two UDP sockets (67 and 4011, broadcast enabled, SO_REUSEADDR so a lab
 * DHCP server on the same host can share port 67), each packet decoded, answered by respond()
 * and sent. Nothing a client sends can throw out of the loop: malformed packets are logged at
 * debug and dropped.
 */
export class DhcpServer {
  #sockets: Socket[] = [];
  #leases: LeaseStore | null = null;
  readonly #log: Logger;
  readonly #neighbours: NeighbourLookup;

  constructor(private readonly options: DhcpServerOptions) {
    this.#log = (options.logger ?? silentLogger).child({ phase: 'dhcp' });
    this.#neighbours = options.neighbours ?? kernelNeighbours();
  }

  get leases(): LeaseStore | null {
    return this.#leases;
  }

  /** Binds both ports; resolves with the ports actually bound. */
  async start(): Promise<{ dhcp: number; pxe: number }> {
    const config = this.options.config();
    const file = this.options.leaseFile ?? join(config.server.stateDir, 'leases.json');
    this.#leases = await LeaseStore.open(file, { now: this.options.now, warn: (msg) => this.#log.warn(msg) });
    const bind = '0.0.0.0';
    if (this.options.bind && this.options.bind !== bind) {
      this.#log.warn({ bind: this.options.bind }, `DHCP listens on 0.0.0.0, not ${this.options.bind}: clients without an address broadcast, and a socket bound to a unicast address never sees broadcasts`);
    }
    try {
      const dhcp = await this.#bind(bind, this.options.ports?.dhcp ?? DHCP_SERVER_PORT);
      const pxe = await this.#bind(bind, this.options.ports?.pxe ?? PXE_PORT);
      this.#log.info({ bind, dhcp, pxe, mode: config.server.dhcp.mode }, 'DHCP server listening');
      return { dhcp, pxe };
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  async #bind(address: string, port: number): Promise<number> {
    const socket = createSocket({ type: 'udp4', reuseAddr: true, recvBufferSize: BURST_RECEIVE_BYTES });
    this.#sockets.push(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, address, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    socket.setBroadcast(true);
    const bound = socket.address().port;
    warnIfReceiveBufferCapped(socket, this.#log, `dhcp ${address}:${bound}`);
    socket.on('error', (err) => this.#log.warn({ err, port: bound }, 'DHCP socket error'));
    socket.on('message', (packet, from) => this.#onPacket(socket, bound, packet, from));
    return bound;
  }

  #onPacket(socket: Socket, port: number, packet: Buffer, from: RemoteInfo): void {
    try {
      this.#handle(socket, port, packet, from);
    } catch (err) {
      // A bug must cost one packet, never the server.
      this.#log.error({ err, from: from.address }, 'DHCP packet handling failed');
    }
  }

  #handle(socket: Socket, port: number, packet: Buffer, from: RemoteInfo): void {
    const decoded = decodeMessage(packet);
    if (!decoded.ok) {
      this.#log.debug({ from: `${from.address}:${from.port}`, bytes: packet.length, ...decoded.error }, 'malformed DHCP packet dropped');
      return;
    }
    const request = decoded.message;
    const type = messageType(request);
    this.options.onPacket?.(messageTypeName(type), 'in');
    // RELEASE and DECLINE (rare) wait for the neighbour entry of the address they name; the rest is answered at once.
    const named = this.options.config().server.dhcp.mode !== 'full' ? undefined : type === MessageType.RELEASE ? request.ciaddr : type === MessageType.DECLINE ? requestedIp(request) : undefined;
    if (named === undefined) return this.#answer(socket, port, request, from);
    this.#neighbours(named).then(
      (mac) => this.#answer(socket, port, request, from, { ip: named, mac }),
      (err: unknown) => {
        this.#log.warn({ err, ip: named }, 'neighbour lookup failed; answering without it');
        this.#answer(socket, port, request, from);
      },
    ).catch((err: unknown) => this.#log.error({ err, from: from.address }, 'DHCP packet handling failed'));
  }

  #answer(socket: Socket, port: number, request: DhcpMessage, from: RemoteInfo, neighbour?: { ip: string; mac: string | undefined }): void {
    const config = this.options.config();
    const { reply, exchange } = respond(request, {
      config,
      port,
      from: { address: from.address, port: from.port },
      leases: config.server.dhcp.mode === 'full' ? this.#leases : null,
      ...(neighbour ? { neighbour } : {}),
    });
    if (exchange) {
      const fields = { mac: exchange.mac, arch: exchange.arch, mode: exchange.mode, port, type: exchange.messageType, reply: exchange.replyType, ...exchange.offered };
      const reason = exchange.ignoredReason;
      const level = reason === 'arm64-no-ipxe' || reason === 'release-forged' || reason === 'decline-forged' ? 'warn' : reason && ROUTINE.has(reason) ? 'debug' : 'info';
      // Every DHCP client on a shared LAN passes by: routine non-answers are debug lines.
      const what = !reply
        ? `not answered: ${exchange.detail ?? reason}`
        : `-> ${exchange.replyType}${reason ? ` without boot file: ${exchange.detail ?? reason}` : ''}`;
      this.#log[level]({ ...fields, ...(reason ? { reason } : {}) }, `DHCP ${exchange.messageType} ${what}`);
      this.options.onExchange?.(exchange);
    }
    if (!reply) return;
    const bytes = encodeMessage(reply.message);
    socket.send(bytes, reply.to.port, reply.to.address, (err) => {
      if (err) this.#log.warn({ err, to: reply.to, mac: exchange?.mac }, 'DHCP reply not sent');
    });
    this.options.onPacket?.(exchange?.replyType ?? 'UNKNOWN', 'out');
  }

  /** Closes the sockets and waits for the lease file to be written. */
  async stop(): Promise<void> {
    const sockets = this.#sockets;
    this.#sockets = [];
    await Promise.all(
      sockets.map(
        (s) =>
          new Promise<void>((resolve) => {
            try {
              s.close(() => resolve());
            } catch {
              resolve(); // never bound
            }
          }),
      ),
    );
    await this.#leases?.flush().catch((err: Error) => this.#log.warn({ err }, 'leases not saved'));
  }
}
