/**
 * What crossed the wire for one boot, from the server's own records: its boot timeline
 * (`/api/machines/<mac>`: one phase per HTTP download) and its Prometheus text (`/metrics`).
 */
export interface TimelinePhase {
  phase: string;
  source: string;
  bytes?: number;
  detail?: string;
}

export interface HttpBytes {
  kernel: number;
  initrd: number;
  layer: number;
  rootfs: number;
}

/**
 * Bytes the server sent over HTTP in one boot, per phase. Aborted downloads count (/init's
 * size probe is a GET it cuts short): their bytes crossed the wire too. Only the server's own
 * records (source http) count: /init reports some of the same phases again (source init).
 */
export function httpBytesByPhase(phases: readonly TimelinePhase[]): HttpBytes {
  const bytes: HttpBytes = { kernel: 0, initrd: 0, layer: 0, rootfs: 0 };
  for (const p of phases) {
    if (p.source !== 'http' || p.bytes === undefined) continue;
    if (p.phase === 'kernel' || p.phase === 'initrd' || p.phase === 'layer' || p.phase === 'rootfs') bytes[p.phase] += p.bytes;
  }
  return bytes;
}

/**
 * `netboot_nbd_bytes_total{export="<id>"}` from Prometheus text exposition: the bytes our NBD
 * server has read for that export so far (0 before the first read, when the series is absent).
 */
export function nbdBytesRead(metrics: string, exportId: string): number {
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('netboot_nbd_bytes_total{')) continue;
    const match = /^netboot_nbd_bytes_total\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = match[1]!.split(',').map((l) => l.trim());
    if (labels.includes(`export="${exportId}"`)) return Number(match[2]);
  }
  return 0;
}
