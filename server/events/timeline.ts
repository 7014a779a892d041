import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { redactSignatures } from '../layers/signing.ts';
import type { Metrics } from './metrics.ts';

/** `queued`: the server told the machine to wait for a root stream (server/admission/); recorded when it got its place and when it was let in (with the wait). */
export const SERVER_PHASES = ['dhcp', 'tftp', 'script', 'kernel', 'initrd', 'layer', 'queued', 'rootfs'] as const;
/** `disk`: what /init did with a local disk (disk.sh): prepared, cache_hit/miss/corrupt, untouched, keep ... */
export const INIT_PHASES = ['init', 'net', 'layer', 'disk', 'rootfs', 'switch_root', 'up', 'failed'] as const;
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
  /** Records not kept because the boot already had `maxPhases` of them. */
  droppedPhases?: number;
}

export interface RecordOptions {
  source: PhaseSource;
  detail?: string;
  bytes?: number;
  durationMs?: number;
  t?: number;
  imageId?: string;
  /**
   * Join this boot of the MAC (an authenticated /init event names its boot) instead of the
   * current one. When no kept boot has this id, a boot with it is opened (the API allows
   * that only while the MAC has no boots at all: the server restarted).
   */
  boot?: string;
}

/** Something refused for the identity it claimed, shown on the claimed MAC's timeline. */
export interface SecurityEvent {
  kind: string;
  detail: string;
  peer?: string;
  /** Server time, ISO 8601. */
  at: string;
}

export interface TimelineOptions {
  metrics?: Metrics;
  now?: () => number;
  /** Boots kept per MAC (the newest). */
  keepBoots?: number;
  /** Whether a MAC is in the config: those are always kept; the others share a bounded LRU. */
  isConfigured?: (mac: string) => boolean;
  /** MACs not in the config remembered at most (the least recently seen are forgotten first). */
  maxUnknownMachines?: number;
  /** Phase records kept per boot (the first ones; the rest are counted in `droppedPhases`). */
  maxPhases?: number;
  /** Characters kept of a detail. */
  maxDetail?: number;
  /** Security events kept per MAC (the newest). */
  maxSecurityEvents?: number;
}

interface MachineEntry {
  boots: Boot[];
  security: SecurityEvent[];
}

/** Phases that belong to the stage before iPXE runs our script: a boot there has not really started. */
const PRE_SCRIPT = new Set<Phase>(['dhcp', 'tftp']);

/**
 * One boot timeline per MAC: every server-side observation (DHCP, TFTP, script, downloads)
 * and every event /init posts. A new boot starts at `dhcp` or `script` unless the current
 * boot is still in the stage before it (iPXE does DHCP twice; a "not built yet" script is
 * fetched again and again); any other phase joins the current boot, or opens one.
 *
 * Everything here can be fed by anyone on the segment (a DHCP packet, a GET naming a MAC),
 * so all of it is bounded: configured MACs are always kept, other MACs share an LRU (so a
 * flood of made-up MACs never pushes out a real machine), and every boot's phase list,
 * every detail and every MAC's security events have a cap.
 */
export class Timeline {
  readonly #configured = new Map<string, MachineEntry>();
  /** Map order = least recently seen first. */
  readonly #unknown = new Map<string, MachineEntry>();
  readonly #metrics?: Metrics;
  readonly #now: () => number;
  readonly #keepBoots: number;
  readonly #isConfigured: (mac: string) => boolean;
  readonly #maxUnknown: number;
  readonly #maxPhases: number;
  readonly #maxDetail: number;
  readonly #maxSecurity: number;
  readonly #listeners = new Set<(mac: string, boot: Boot) => void>();

  constructor(options: TimelineOptions = {}) {
    this.#metrics = options.metrics;
    this.#now = options.now ?? Date.now;
    this.#keepBoots = options.keepBoots ?? 5;
    this.#isConfigured = options.isConfigured ?? (() => false);
    this.#maxUnknown = options.maxUnknownMachines ?? 1024;
    this.#maxPhases = options.maxPhases ?? 256;
    this.#maxDetail = options.maxDetail ?? 512;
    this.#maxSecurity = options.maxSecurityEvents ?? 32;
  }

  /** Records a phase for a MAC (canonical colon form) and returns the boot it joined. */
  record(mac: string, phase: Phase, options: RecordOptions): Boot {
    const { boots } = this.#touch(mac);
    let boot = options.boot !== undefined ? boots.find((b) => b.id === options.boot) : boots.at(-1);
    if (!boot || (options.boot === undefined && this.#startsNewBoot(boot, phase))) {
      boot = { id: options.boot ?? randomBytes(8).toString('hex'), startedAt: new Date(this.#now()).toISOString(), state: 'booting', phases: [] };
      boots.push(boot);
      if (boots.length > this.#keepBoots) boots.splice(0, boots.length - this.#keepBoots);
      this.#metrics?.boots.inc({ outcome: 'started' });
    }

    const record: PhaseRecord = { phase, source: options.source, at: new Date(this.#now()).toISOString() };
    if (options.t !== undefined) record.t = options.t;
    if (options.detail !== undefined) record.detail = this.#clip(options.detail);
    if (options.bytes !== undefined) record.bytes = options.bytes;
    let durationMs = options.durationMs;
    if (durationMs === undefined && options.source === 'init' && options.t !== undefined) {
      const previous = [...boot.phases].reverse().find((p) => p.source === 'init' && p.t !== undefined);
      if (previous?.t !== undefined && options.t >= previous.t) durationMs = (options.t - previous.t) * 1000;
    }
    if (durationMs !== undefined) record.durationMs = durationMs;
    if (options.imageId) boot.imageId = options.imageId;
    if (boot.phases.length < this.#maxPhases) boot.phases.push(record);
    else boot.droppedPhases = (boot.droppedPhases ?? 0) + 1;

    if (phase === 'up' && boot.state !== 'up') {
      boot.state = 'up';
      this.#metrics?.boots.inc({ outcome: 'up' });
    } else if (phase === 'failed' && boot.state !== 'failed') {
      boot.state = 'failed';
      this.#metrics?.boots.inc({ outcome: 'failed' });
    }
    this.#metrics?.bootPhases.inc({ phase, source: options.source });
    if (phase === 'disk' && options.source === 'init') this.#metrics?.diskEvent(options.detail ?? '', options.bytes);
    if (durationMs !== undefined) this.#metrics?.phaseDuration.observe({ phase }, durationMs / 1000);
    for (const listener of this.#listeners) {
      try {
        listener(mac, boot);
      } catch {
        // A listener's fault (e.g. a closed status-page stream) must not fail the recording.
      }
    }
    return boot;
  }

  /**
   * Calls `listener` after every recorded phase (synchronously: keep it cheap, e.g. mark the MAC
   * dirty). Returns the unsubscribe function.
   */
  subscribe(listener: (mac: string, boot: Boot) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * A request refused for the MAC it claimed (wrong peer, bad token): counted in
   * `netboot_security_events_total{kind}`, and kept on that MAC's timeline without opening a
   * boot when the MAC is configured (a stranger's made-up MACs must not fill the timeline).
   */
  security(mac: string, event: { kind: string; detail: string; peer?: string }): void {
    this.#metrics?.securityEvent(event.kind);
    if (!this.#isConfigured(mac)) return;
    const { security } = this.#touch(mac);
    const entry: SecurityEvent = { kind: event.kind, detail: this.#clip(event.detail), at: new Date(this.#now()).toISOString() };
    if (event.peer !== undefined) entry.peer = event.peer;
    security.push(entry);
    if (security.length > this.#maxSecurity) security.splice(0, security.length - this.#maxSecurity);
  }

  /** The entry of a MAC, created if needed, moved to the most-recently-seen end. */
  #touch(mac: string): MachineEntry {
    const entry = this.#configured.get(mac) ?? this.#unknown.get(mac) ?? { boots: [], security: [] };
    this.#configured.delete(mac);
    this.#unknown.delete(mac);
    if (this.#isConfigured(mac)) {
      this.#configured.set(mac, entry);
    } else {
      this.#unknown.set(mac, entry);
      if (this.#unknown.size > this.#maxUnknown) this.#unknown.delete(this.#unknown.keys().next().value!);
    }
    return entry;
  }

  #clip(text: string): string {
    const clean = redactSignatures(text);
    return clean.length > this.#maxDetail ? `${clean.slice(0, this.#maxDetail)}… (${clean.length - this.#maxDetail} more characters)` : clean;
  }

  #startsNewBoot(current: Boot, phase: Phase): boolean {
    if (phase === 'dhcp') return current.phases.some((p) => !PRE_SCRIPT.has(p.phase));
    if (phase === 'script') return current.phases.some((p) => !PRE_SCRIPT.has(p.phase) && p.phase !== 'script');
    return false;
  }

  #entry(mac: string): MachineEntry | undefined {
    return this.#configured.get(mac) ?? this.#unknown.get(mac);
  }

  /** The boot in progress or last finished for a MAC. */
  current(mac: string): Boot | undefined {
    return this.#entry(mac)?.boots.at(-1);
  }

  boots(mac: string): readonly Boot[] {
    return this.#entry(mac)?.boots ?? [];
  }

  /** Security events for a MAC, oldest first. */
  securityEvents(mac: string): readonly SecurityEvent[] {
    return this.#entry(mac)?.security ?? [];
  }

  /** Whether anything (a boot or a security event) is remembered for a MAC. */
  has(mac: string): boolean {
    return this.#entry(mac) !== undefined;
  }

  state(mac: string): BootState {
    return this.current(mac)?.state ?? 'never';
  }

  /** Every MAC remembered: configured ones first, then the others least recently seen first. */
  macs(): string[] {
    return [...this.#configured.keys(), ...this.#unknown.keys()];
  }
}
