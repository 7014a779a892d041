import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { loopLagSampler, type LoopLagSampler } from './loop-lag.ts';

/** Outcomes of /init's `disk` events (boot-assets/initramfs/lib/netboot/disk.sh); anything else counts as `other` (labels stay bounded). */
const DISK_OUTCOMES = new Set(['prepared', 'cache_hit', 'cache_miss', 'cache_corrupt', 'keep', 'untouched', 'not_prepared', 'no_disk', 'prepare_failed', 'mount_failed', 'no_space', 'no_hash']);

/** Artifact kinds counted in `netboot_http_bytes_total`. */
export type ArtifactKind = 'vmlinuz' | 'initrd.img' | 'image-initrd.img' | 'rootfs.squashfs' | 'rootfs.verity' | 'manifest.json' | 'layer' | 'script';

/**
 * The server's Prometheus metrics, in their own Registry (so tests and several servers in one
 * process never collide in prom-client's global one). DHCP, TFTP and the image cache report
 * through the small methods below; the timeline reports boot phases.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly bootPhases = new Counter({
    name: 'netboot_boot_phases_total',
    help: 'Boot phases reached, by phase and where the report came from',
    labelNames: ['phase', 'source'] as const,
    registers: [this.registry],
  });
  readonly boots = new Counter({
    name: 'netboot_boots_total',
    help: 'Boots by outcome: started, up, failed',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly phaseDuration = new Histogram({
    name: 'netboot_phase_duration_seconds',
    help: 'Duration of a boot phase (downloads: transfer time; init phases: time since the previous event)',
    labelNames: ['phase'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [this.registry],
  });
  readonly bytesServed = new Counter({
    name: 'netboot_http_bytes_total',
    help: 'Bytes sent over HTTP, by artifact kind',
    labelNames: ['artifact'] as const,
    registers: [this.registry],
  });
  readonly dhcpPackets = new Counter({
    name: 'netboot_dhcp_packets_total',
    help: 'DHCP packets handled, by message type and direction',
    labelNames: ['type', 'direction'] as const,
    registers: [this.registry],
  });
  readonly tftpTransfers = new Counter({
    name: 'netboot_tftp_transfers_total',
    help: 'TFTP transfers, by outcome',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly tftpBytes = new Counter({
    name: 'netboot_tftp_bytes_total',
    help: 'Bytes sent over TFTP',
    registers: [this.registry],
  });
  readonly imageBuild = new Histogram({
    name: 'netboot_image_build_seconds',
    help: 'Image build durations, by image and outcome',
    labelNames: ['image', 'outcome'] as const,
    buckets: [1, 5, 10, 30, 60, 120, 300, 600, 1800],
    registers: [this.registry],
  });

  readonly securityEvents = new Counter({
    name: 'netboot_security_events_total',
    help: 'Requests refused for the identity they claimed (wrong peer for a MAC, bad event token), by kind',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  readonly diskOutcomes = new Counter({
    name: 'netboot_disk_events_total',
    help: 'What machines did with their local disk (initramfs disk.sh), by outcome: cache_hit, cache_miss, cache_corrupt, prepared, untouched, no_disk, ...',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly diskBytesSaved = new Counter({
    name: 'netboot_disk_cache_saved_bytes_total',
    help: 'Root bytes machines read from their disk cache instead of downloading them',
    registers: [this.registry],
  });

  /** A `disk` event from /init: its outcome is the detail's first word (`cache_hit: ...`); a hit saved `bytes`. */
  diskEvent(detail: string, bytes?: number): void {
    const outcome = /^([a-z_]{1,32}):/.exec(detail)?.[1] ?? 'other';
    this.diskOutcomes.inc({ outcome: DISK_OUTCOMES.has(outcome) ? outcome : 'other' });
    if (outcome === 'cache_hit' && bytes !== undefined) this.diskBytesSaved.inc(bytes);
  }

  /** One request refused for the identity it claimed (see Timeline.security). */
  securityEvent(kind: string): void {
    this.securityEvents.inc({ kind });
  }

  /** DHCP: one packet received (`in`) or sent (`out`), e.g. dhcpPacket('DISCOVER', 'in'). */
  dhcpPacket(type: string, direction: 'in' | 'out'): void {
    this.dhcpPackets.inc({ type, direction });
  }

  /** TFTP: one transfer ended. */
  tftpTransfer(outcome: 'complete' | 'error' | 'timeout', bytes: number): void {
    this.tftpTransfers.inc({ outcome });
    if (bytes > 0) this.tftpBytes.inc(bytes);
  }

  /** Image cache: one build ended. */
  imageBuilt(image: string, seconds: number, outcome: 'ok' | 'failed' | 'cached'): void {
    this.imageBuild.observe({ image, outcome }, seconds);
  }

  readonly nbdBytes = new Counter({
    name: 'netboot_nbd_bytes_total',
    help: 'Bytes of root filesystem read over NBD, by export (image id)',
    labelNames: ['export'] as const,
    registers: [this.registry],
  });

  readonly nbdReadSeconds = new Histogram({
    name: 'netboot_nbd_read_seconds',
    help: 'NBD read latency, from request to reply (queueing included)',
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [this.registry],
  });

  /** NBD reads answered since the last batch (the NBD thread reports them every 100 ms). */
  nbdReads(batch: { bytesByExport: [string, number][]; latenciesMs: ArrayLike<number> }): void {
    for (const [exportName, bytes] of batch.bytesByExport) this.nbdBytes.inc({ export: exportName }, bytes);
    for (let i = 0; i < batch.latenciesMs.length; i++) this.nbdReadSeconds.observe(batch.latenciesMs[i]! / 1000);
  }

  /** Admission control (server/admission/): root streams, and kernels with initrds, each its own queue. */
  readonly rootStreams = new StreamQueueMetrics(this.registry, 'netboot_root', {
    streams: 'Root streams (whole-rootfs HTTP downloads)',
    queue: 'the root stream queue',
    requests: 'Root stream requests',
  });
  readonly bootFileStreams = new StreamQueueMetrics(this.registry, 'netboot_boot_file', {
    streams: 'Kernel and initrd streams (server.admission.maxBootFileStreams)',
    queue: 'the kernel and initrd queue',
    requests: 'Kernel and initrd requests',
  });

  /**
   * The main event loop's lateness between two scrapes (LoopLagSampler): every DHCP answer,
   * script, layer and event waits behind that loop, so in a boot storm this is the delay each of
   * them saw on top of its own work. Each scrape reads the sampler and restarts it.
   */
  readonly loopLag: Gauge<'quantile'>;

  constructor(sampler: LoopLagSampler = loopLagSampler()) {
    this.loopLag = new Gauge({
      name: 'netboot_event_loop_lag_seconds',
      help: 'Lateness of the main event loop since the last scrape: quantile 0.5, 0.99 and 1 (the longest)',
      labelNames: ['quantile'] as const,
      registers: [this.registry],
      collect() {
        const lag = sampler.take();
        this.set({ quantile: '0.5' }, lag.p50);
        this.set({ quantile: '0.99' }, lag.p99);
        this.set({ quantile: '1' }, lag.max);
      },
    });
  }

  served(artifact: ArtifactKind, bytes: number): void {
    if (bytes > 0) this.bytesServed.inc({ artifact }, bytes);
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** The five metrics of one admission queue: its state, its 503s, the streams it cut, how long machines waited. */
export class StreamQueueMetrics {
  readonly #active: Gauge;
  readonly #queued: Gauge;
  readonly #refused: Counter<'reason'>;
  readonly #preempted: Counter;
  readonly #wait: Histogram;

  constructor(registry: Registry, prefix: string, text: { streams: string; queue: string; requests: string }) {
    const registers = [registry];
    this.#active = new Gauge({ name: `${prefix}_streams_active`, help: `${text.streams} running, as of the last admission decision or stream end`, registers });
    this.#queued = new Gauge({ name: `${prefix}_streams_queued`, help: `Machines holding a place in ${text.queue}, as of the last admission decision or stream end`, registers });
    this.#refused = new Counter({
      name: `${prefix}_stream_503_total`,
      help: `${text.requests} answered 503 + Retry-After, by reason: wait (queued), queue_full, address_full (no place given)`,
      labelNames: ['reason'] as const,
      registers,
    });
    this.#preempted = new Counter({ name: `${prefix}_streams_preempted_total`, help: `${text.streams} cut for running past the preemption time while machines waited`, registers });
    this.#wait = new Histogram({
      name: `${prefix}_stream_queue_wait_seconds`,
      help: 'Time queued machines waited, from their first 503 to being let in',
      buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800],
      registers,
    });
  }

  /** The queue's state after a decision or a stream's end. */
  state(active: number, queued: number): void {
    this.#active.set(active);
    this.#queued.set(queued);
  }

  /** One 503 handed out. */
  refused(reason: 'wait' | 'queue_full' | 'address_full'): void {
    this.#refused.inc({ reason });
  }

  /** A queued machine was let in after waiting `ms`. */
  waited(ms: number): void {
    this.#wait.observe(ms / 1000);
  }

  preempted(): void {
    this.#preempted.inc();
  }
}
