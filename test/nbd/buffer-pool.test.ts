import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../server/nbd/buffer-pool.ts';

describe('BufferPool', () => {
  it('hands out buffers rounded up to 64 KiB classes and reuses released ones of the same class', () => {
    const pool = new BufferPool();
    const a = pool.acquire(256 * 1024 + 16);
    expect(a.length).toBe(320 * 1024);
    pool.release(a);
    expect(pool.idleBytes).toBe(320 * 1024);
    expect(pool.acquire(300 * 1024)).toBe(a);
    expect(pool.idleBytes).toBe(0);
    expect(pool.acquire(300 * 1024)).not.toBe(a);
    expect(pool.acquire(1).length).toBe(64 * 1024);
  });

  it('keeps at most maxPooledBytes idle and ignores foreign buffers', () => {
    const pool = new BufferPool(128 * 1024);
    const [a, b, c] = [pool.acquire(64 * 1024), pool.acquire(64 * 1024), pool.acquire(64 * 1024)];
    pool.release(a!);
    pool.release(b!);
    pool.release(c!);
    expect(pool.idleBytes).toBe(128 * 1024);
    pool.release(Buffer.alloc(1000));
    expect(pool.idleBytes).toBe(128 * 1024);
  });
});
