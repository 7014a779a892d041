/**
 * Reply buffers reused across reads. A fresh large Buffer per read costs a page fault per
 * 4 KiB touched plus garbage collection; at GiB/s that was most of the server's CPU.
 * Buffers come in 64 KiB size classes; at most `maxPooledBytes` are kept idle.
 */
const CLASS = 64 * 1024;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(private readonly maxPooledBytes = 64 * 1024 * 1024) {}

  /** A buffer of at least `size` bytes (use `.subarray(0, size)`); give it back with `release`. */
  acquire(size: number): Buffer {
    const capacity = Math.max(CLASS, Math.ceil(size / CLASS) * CLASS);
    const list = this.free.get(capacity);
    const reused = list?.pop();
    if (reused) {
      this.pooledBytes -= capacity;
      return reused;
    }
    return Buffer.allocUnsafeSlow(capacity);
  }

  release(buffer: Buffer): void {
    const capacity = buffer.length;
    if (capacity % CLASS !== 0 || this.pooledBytes + capacity > this.maxPooledBytes) return;
    const list = this.free.get(capacity);
    if (list) list.push(buffer);
    else this.free.set(capacity, [buffer]);
    this.pooledBytes += capacity;
  }

  get idleBytes(): number {
    return this.pooledBytes;
  }
}
