/**
 * When each MAC was last seen in a DHCP packet (any packet our DHCP server received with that
 * client hardware address, answered or not). Bounded: the least recently seen are forgotten.
 */
export interface SightingInfo {
  /** Option 93's first entry. */
  arch?: number | null;
  /** Option 60. */
  vendorClass?: string | null;
  /** The address offered (full mode). */
  address?: string | null;
}

export class DhcpSightings {
  readonly #seen = new Map<string, number>();
  /** What the last packet said (the status page's inbox); same bound and order as #seen. */
  readonly #info = new Map<string, SightingInfo>();

  constructor(
    private readonly maxEntries = 4096,
    private readonly now: () => number = Date.now,
  ) {}

  note(mac: string, info?: SightingInfo): void {
    this.#seen.delete(mac);
    this.#seen.set(mac, this.now());
    if (info) this.#info.set(mac, { ...this.#info.get(mac), ...Object.fromEntries(Object.entries(info).filter(([, v]) => v !== undefined && v !== null)) });
    if (this.#seen.size > this.maxEntries) {
      const oldest = this.#seen.keys().next().value!;
      this.#seen.delete(oldest);
      this.#info.delete(oldest);
    }
  }

  info(mac: string): SightingInfo | undefined {
    return this.#info.get(mac);
  }

  /** Milliseconds since the MAC's last DHCP packet, or undefined when none is remembered. */
  ageMs(mac: string): number | undefined {
    const at = this.#seen.get(mac);
    return at === undefined ? undefined : this.now() - at;
  }
}
