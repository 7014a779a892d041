import { readFileSync, statSync, type Stats } from 'node:fs';

/** What changes when a file is replaced (a new inode renamed in) or rewritten in place. */
export const statKey = (info: Stats): string => `${info.dev}:${info.ino}:${info.size}:${info.mtimeMs}:${info.ctimeMs}`;

/**
 * Small files read on every request (an image's `.current` pointer, its manifest), parsed once
 * and read again only when their inode, size or times change: a stat instead of a read and a
 * parse. Synchronous on purpose: a stat of a local file takes microseconds, while each async
 * fs call is a trip through the thread pool plus a turn of the event loop, and in a boot storm
 * every turn is long (hundreds of TFTP and DHCP packets). Another process replacing a file
 * (writeFileAtomic renames a new inode in) is seen at the next call.
 */
export class ParsedFileCache<T> {
  readonly #entries = new Map<string, { key: string; value: T }>();

  constructor(
    private readonly parse: (text: string) => T,
    private readonly maxEntries = 4096,
  ) {}

  /** The parsed content, or null when the file is missing or does not parse. */
  get(path: string): T | null {
    let key: string;
    try {
      const info = statSync(path, { throwIfNoEntry: false });
      if (!info?.isFile()) {
        this.#entries.delete(path);
        return null;
      }
      key = statKey(info);
    } catch {
      return null;
    }
    const cached = this.#entries.get(path);
    if (cached?.key === key) return cached.value;
    let value: T;
    try {
      value = this.parse(readFileSync(path, 'utf8'));
    } catch {
      this.#entries.delete(path);
      return null;
    }
    if (this.#entries.size >= this.maxEntries) this.#entries.clear();
    this.#entries.set(path, { key, value });
    return value;
  }
}
