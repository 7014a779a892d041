import type { Socket } from 'node:dgram';
import type { Logger } from './log.ts';

/**
 * Receive buffer of the sockets a whole fleet sends to at the same instant (DHCP, TFTP's request
 * port). 500 machines powering on together send 500 DISCOVERs, then 500 RRQs, within
 * milliseconds; the kernel's default buffer (208 KiB, about 100 such packets) drops the rest, and
 * each drop costs its machine a firmware retry 4 s later (bench/storm: DHCP p99 28 s -> 1.1 s).
 * The kernel caps it at net.core.rmem_max.
 */
export const BURST_RECEIVE_BYTES = 4 << 20;

/** What lifts the cap, now and across reboots. */
export const RMEM_MAX_FIX = `sysctl -w net.core.rmem_max=${BURST_RECEIVE_BYTES} and keep it: echo net.core.rmem_max=${BURST_RECEIVE_BYTES} > /etc/sysctl.d/90-netboot.conf`;

let warned = false;

/** Warns once per process when net.core.rmem_max held a request socket's buffer below BURST_RECEIVE_BYTES. */
export function warnIfReceiveBufferCapped(socket: Socket, log: Logger, what: string): void {
  let bytes: number;
  try {
    bytes = socket.getRecvBufferSize(); // Linux reports twice what was set (its bookkeeping overhead)
  } catch {
    return;
  }
  if (bytes >= BURST_RECEIVE_BYTES || warned) return;
  warned = true;
  log.warn(
    { socket: what, bytes, wanted: BURST_RECEIVE_BYTES },
    `UDP receive buffer capped by net.core.rmem_max: when many machines boot at once, requests beyond it are dropped and wait for a firmware retry; fix: ${RMEM_MAX_FIX}`,
  );
}
