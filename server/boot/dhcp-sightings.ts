/**
 * When each MAC was last seen in a DHCP packet (any packet our DHCP server received with that
 * client hardware address, answered or not). Bounded: the least recently seen are forgotten.
 */
export class DhcpSightings {
  readonly #seen = new Map<string, number>();

  constructor(
    private readonly maxEntries = 4096,
    private readonly now: () => number = Date.now,
  ) {}

  note(mac: string): void {
    this.#seen.delete(mac);
    this.#seen.set(mac, this.now());
    if (this.#seen.size > this.maxEntries) this.#seen.delete(this.#seen.keys().next().value!);
  }

  /** Milliseconds since the MAC's last DHCP packet, or undefined when none is remembered. */
  ageMs(mac: string): number | undefined {
    const at = this.#seen.get(mac);
    return at === undefined ? undefined : this.now() - at;
  }
}
