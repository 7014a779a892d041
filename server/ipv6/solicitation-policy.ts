/**
 * Which Router Solicitations netboot answers (server.ipv6RouterAdvert: auto). Pure: times are
 * passed in. Answered: a machine netboot is booting (its DHCP got a boot file from us less than
 * `windowMs` ago), at most `maxAnswersPerWindow` times per window, and only while no real IPv6
 * router has been heard on the segment for `routerMemoryMs` (a real router's RA carries what
 * the machine should get; ours would only race it). Bounded: at most `maxMachines` windows,
 * the oldest dropped first.
 */

export interface SolicitationPolicyOptions {
  windowMs: number;
  maxAnswersPerWindow: number;
  maxMachines: number;
  routerMemoryMs: number;
}

export const DEFAULT_POLICY: SolicitationPolicyOptions = {
  // Firmware DHCP -> TFTP of iPXE -> iPXE's own RS takes seconds on hardware, a minute under TCG.
  windowMs: 180_000,
  // iPXE sends a handful of RS per configuration (backoff from 1/8 s up to 3 s); some boots load iPXE twice.
  maxAnswersPerWindow: 16,
  maxMachines: 4096,
  // Routers advertise at least every 600 s by default (RFC 4861 MaxRtrAdvInterval): three of those.
  routerMemoryMs: 1_800_000,
};

export type SolicitationVerdict =
  | { answer: true }
  | { answer: false; reason: 'not-booting' | 'window-over' | 'answer-limit' | 'router-present' };

interface Window {
  openedAt: number;
  answers: number;
}

export class SolicitationPolicy {
  readonly #windows = new Map<string, Window>();
  #routerHeardAt: number | null = null;

  constructor(readonly options: SolicitationPolicyOptions = DEFAULT_POLICY) {}

  /** netboot answered this MAC's DHCP with a boot file: it is booting now. */
  bootStarted(mac: string, now: number): void {
    this.#windows.delete(mac);
    this.#windows.set(mac, { openedAt: now, answers: 0 });
    for (const [oldest, window] of this.#windows) {
      if (this.#windows.size <= this.options.maxMachines && now - window.openedAt < this.options.windowMs) break;
      this.#windows.delete(oldest);
    }
  }

  /** An RA from someone else that makes hosts use a router, an address or DHCPv6. */
  routerHeard(now: number): void {
    this.#routerHeardAt = now;
  }

  get routerHeardAt(): number | null {
    return this.#routerHeardAt;
  }

  /** Whether to answer this RS; an answer counts against the window. */
  decide(mac: string, now: number): SolicitationVerdict {
    if (this.#routerHeardAt !== null && now - this.#routerHeardAt < this.options.routerMemoryMs) return { answer: false, reason: 'router-present' };
    const window = this.#windows.get(mac);
    if (!window) return { answer: false, reason: 'not-booting' };
    if (now - window.openedAt >= this.options.windowMs) {
      this.#windows.delete(mac);
      return { answer: false, reason: 'window-over' };
    }
    if (window.answers >= this.options.maxAnswersPerWindow) return { answer: false, reason: 'answer-limit' };
    window.answers++;
    return { answer: true };
  }

  get size(): number {
    return this.#windows.size;
  }
}
