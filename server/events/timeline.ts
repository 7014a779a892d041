import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { Metrics } from './metrics.ts';

export const SERVER_PHASES = ['dhcp', 'tftp', 'script', 'kernel', 'initrd', 'layer', 'rootfs'] as const;
export const INIT_PHASES = ['init', 'net', 'layer', 'rootfs', 'switch_root', 'up', 'failed'] as const;
export type ServerPhase = (typeof SERVER_PHASES)[number];
export type InitPhase = (typeof INIT_PHASES)[number];
export type Phase = ServerPhase | InitPhase;
export type PhaseSource = 'dhcp' | 'tftp' | 'http' | 'nbd' | 'init';
export type BootState = 'booting' | 'up' | 'failed' | 'never';

/** Body of `POST /api/machines/<mac>/events`, sent by /init. */
export const initEventSchema = z.strictObject({
  phase: z.enum(INIT_PHASES),
  /** The machine's clock when it happened: seconds since its kernel started (/proc/uptime). */
  t: z.number().finite().nonnegative(),
  detail: z.string().max(4096).optional(),
  bytes: z.number().int().nonnegative().optional(),
  durationMs: z.number().nonnegative().finite().optional(),
});
export type InitEvent = z.infer<typeof initEventSchema>;

export interface PhaseRecord {
  phase: Phase;
  source: PhaseSource;
  /** Server time, ISO 8601. */
  at: string;
  /** Client clock (init events only). */
  t?: number;
  detail?: string;
  bytes?: number;
  durationMs?: number;
}

export interface Boot {
  id: string;
  startedAt: string;
  state: Exclude<BootState, 'never'>;
  imageId?: string;
  phases: PhaseRecord[];
}

export interface RecordOptions {
  source: PhaseSource;
  detail?: string;
  bytes?: number;
  durationMs?: number;
  t?: number;
  imageId?: string;
}

export interface TimelineOptions {
  metrics?: Metrics;
  now?: () => number;
  /** Boots kept per MAC (the newest). */
  keepBoots?: number;
  /** MACs remembered at most (the least recently seen are forgotten first). */
  maxMachines?: number;
}

/** Phases that belong to the stage before iPXE runs our script: a boot there has not really started. */
const PRE_SCRIPT = new Set<Phase>(['dhcp', 'tftp']);

/**
 * One boot timeline per MAC: every server-side observation (DHCP, TFTP, script, downloads)
 * and every event /init posts. A new boot starts at `dhcp` or `script` unless the current
 * boot is still in the stage before it (iPXE does DHCP twice; a "not built yet" script is
 * fetched again and again); any other phase joins the current boot, or opens one.
 */
export class Timeline {
  readonly #boots = new Map<string, Boot[]>();
  readonly #metrics?: Metrics;
  readonly #now: () => number;
  readonly #keepBoots: number;
  readonly #maxMachines: number;

  constructor(options: TimelineOptions = {}) {
    this.#metrics = options.metrics;
    this.#now = options.now ?? Date.now;
    this.#keepBoots = options.keepBoots ?? 5;
    this.#maxMachines = options.maxMachines ?? 10_000;
  }

  /** Records a phase for a MAC (canonical colon form) and returns the boot it joined. */
  record(mac: string, phase: Phase, options: RecordOptions): Boot {
    const boots = this.#boots.get(mac) ?? [];
    let boot = boots.at(-1);
    if (!boot || this.#startsNewBoot(boot, phase)) {
      boot = { id: randomBytes(8).toString('hex'), startedAt: new Date(this.#now()).toISOString(), state: 'booting', phases: [] };
      boots.push(boot);
      if (boots.length > this.#keepBoots) boots.splice(0, boots.length - this.#keepBoots);
      this.#metrics?.boots.inc({ outcome: 'started' });
    }
    // Re-insert so that the map's order is least-recently-seen first.
    this.#boots.delete(mac);
    this.#boots.set(mac, boots);
    if (this.#boots.size > this.#maxMachines) this.#boots.delete(this.#boots.keys().next().value!);

    const record: PhaseRecord = { phase, source: options.source, at: new Date(this.#now()).toISOString() };
    if (options.t !== undefined) record.t = options.t;
    if (options.detail !== undefined) record.detail = options.detail;
    if (options.bytes !== undefined) record.bytes = options.bytes;
    let durationMs = options.durationMs;
    if (durationMs === undefined && options.source === 'init' && options.t !== undefined) {
      const previous = [...boot.phases].reverse().find((p) => p.source === 'init' && p.t !== undefined);
      if (previous?.t !== undefined && options.t >= previous.t) durationMs = (options.t - previous.t) * 1000;
    }
    if (durationMs !== undefined) record.durationMs = durationMs;
    if (options.imageId) boot.imageId = options.imageId;
    boot.phases.push(record);

    if (phase === 'up' && boot.state !== 'up') {
      boot.state = 'up';
      this.#metrics?.boots.inc({ outcome: 'up' });
    } else if (phase === 'failed' && boot.state !== 'failed') {
      boot.state = 'failed';
      this.#metrics?.boots.inc({ outcome: 'failed' });
    }
    this.#metrics?.bootPhases.inc({ phase, source: options.source });
    if (durationMs !== undefined) this.#metrics?.phaseDuration.observe({ phase }, durationMs / 1000);
    return boot;
  }

  #startsNewBoot(current: Boot, phase: Phase): boolean {
    if (phase === 'dhcp') return current.phases.some((p) => !PRE_SCRIPT.has(p.phase));
    if (phase === 'script') return current.phases.some((p) => !PRE_SCRIPT.has(p.phase) && p.phase !== 'script');
    return false;
  }

  /** The boot in progress or last finished for a MAC. */
  current(mac: string): Boot | undefined {
    return this.#boots.get(mac)?.at(-1);
  }

  boots(mac: string): readonly Boot[] {
    return this.#boots.get(mac) ?? [];
  }

  state(mac: string): BootState {
    return this.current(mac)?.state ?? 'never';
  }

  /** Every MAC seen, least recently seen first. */
  macs(): string[] {
    return [...this.#boots.keys()];
  }
}
