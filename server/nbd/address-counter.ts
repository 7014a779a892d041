/** Open connections per client IP address, so one host cannot take every connection slot. */
export class AddressCounter {
  private readonly counts = new Map<string, number>();

  count(address: string): number {
    return this.counts.get(address) ?? 0;
  }

  add(address: string): void {
    this.counts.set(address, this.count(address) + 1);
  }

  remove(address: string): void {
    const n = this.count(address) - 1;
    if (n > 0) this.counts.set(address, n);
    else this.counts.delete(address);
  }

  /** Addresses with at least one connection. */
  get size(): number {
    return this.counts.size;
  }
}
