/**
 * When each MAC was last seen in a DHCP packet (any packet our DHCP server received with that
 * client hardware address, answered or not). Anyone can send DHCP with any chaddr, so this is
 * bounded, and configured MACs are kept apart from the others: a flood of made-up MACs evicts
 * only other unknown MACs, never the sighting a configured machine needs as identity evidence
 * (proxy mode). Each part forgets its least recently seen first.
 */
export interface SightingInfo {
  /** Option 93's first entry. */
  arch?: number | null;
  /** Option 60. */
  vendorClass?: string | null;
  /** The address offered (full mode). */
  address?: string | null;
}

interface Sighting {
  at: number;
  /** What the last packets said (the status page's inbox), merged. */
  info?: SightingInfo;
}

export class DhcpSightings {
  /** Map order = least recently seen first. */
  readonly #configured = new Map<string, Sighting>();
  readonly #unknown = new Map<string, Sighting>();

  /**
   * `maxEntries` bounds each part (configured MACs, the others); `isConfigured` is asked at
   * every packet, so a config reload applies to the next one.
   */
  constructor(
    private readonly maxEntries = 4096,
    private readonly now: () => number = Date.now,
    private readonly isConfigured: (mac: string) => boolean = () => false,
  ) {}

  note(mac: string, info?: SightingInfo): void {
    const previous = this.#configured.get(mac) ?? this.#unknown.get(mac);
    this.#configured.delete(mac);
    this.#unknown.delete(mac);
    const sighting: Sighting = { at: this.now() };
    const merged = info ? { ...previous?.info, ...Object.fromEntries(Object.entries(info).filter(([, v]) => v !== undefined && v !== null)) } : previous?.info;
    if (merged) sighting.info = merged;
    const part = this.isConfigured(mac) ? this.#configured : this.#unknown;
    part.set(mac, sighting);
    if (part.size > this.maxEntries) part.delete(part.keys().next().value!);
  }

  #get(mac: string): Sighting | undefined {
    return this.#configured.get(mac) ?? this.#unknown.get(mac);
  }

  info(mac: string): SightingInfo | undefined {
    return this.#get(mac)?.info;
  }

  /** Milliseconds since the MAC's last DHCP packet, or undefined when none is remembered. */
  ageMs(mac: string): number | undefined {
    const at = this.#get(mac)?.at;
    return at === undefined ? undefined : this.now() - at;
  }
}
