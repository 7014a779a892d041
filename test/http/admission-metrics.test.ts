import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePrometheusText, sampleValue, type Family } from '../events/prom-parse.ts';
import { baseYaml, harness, type Harness } from './setup.ts';

const run = promisify(execFile);

/**
 * The admission metrics in /metrics, against the real server on loopback with curl clients
 * (budget 1). The stream holding the budget is a raw TCP client that stops reading, so it runs
 * exactly until the test lets it finish. A second source address (127.0.0.2, still loopback)
 * tells the per-address cap from the queue cap.
 */
const ID = 'ad0ad0ad0ad0ad0b';
const BIG = 48 << 20; // far more than loopback socket buffers hold: a paused reader really blocks the stream
const mac = (n: number) => `52-54-00-ad-01-0${n}`;

async function serverWithRootfs(admission: string): Promise<{ h: Harness; url: (n: number) => string }> {
  const h = await harness(baseYaml({ server: `  admission:\n${admission}` }));
  mkdirSync(join(h.store.root, ID), { recursive: true });
  const big = Buffer.alloc(BIG, 0x5a);
  big.write('hsqs', 0, 'latin1');
  writeFileSync(h.store.artifactPath(ID, 'rootfs.squashfs')!, big);
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const base = `http://127.0.0.1:${(h.app.server.address() as AddressInfo).port}`;
  return { h, url: (n) => `${base}/images/${ID}/rootfs.squashfs?mac=${mac(n)}` };
}

async function curlStatus(url: string, extra: string[] = []): Promise<string> {
  return (await run('curl', ['-sS', '--max-time', '60', '-o', '/dev/null', '-w', '%{http_code}', ...extra, url])).stdout;
}

async function scrape(url: string): Promise<Map<string, Family>> {
  const { stdout } = await run('curl', ['-sS', '--fail', '--max-time', '30', `${new URL(url).origin}/metrics`], { maxBuffer: 4 << 20 });
  return parsePrometheusText(stdout);
}

/** A download that is admitted, receives its headers, then stops reading until `finish()`. */
async function heldStream(url: string): Promise<{ status: string; finish(): Promise<void>; abandon(): void }> {
  const { pathname, search, port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write(`GET ${pathname}${search} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n`);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const head = await new Promise<string>((resolve) => {
    socket.once('data', (chunk: Buffer) => {
      socket.pause();
      resolve(chunk.toString('latin1'));
    });
  });
  return {
    status: head.split('\r\n')[0]!,
    async finish() {
      socket.on('data', () => {});
      socket.resume();
      // Connection: close: the server closes after the body, i.e. after the stream has released its slot.
      await closed;
    },
    abandon() {
      socket.destroy();
    },
  };
}

describe('admission metrics: active, queued, 503s by reason, queue wait', () => {
  let h: Harness;
  let url: (n: number) => string;
  beforeAll(async () => {
    ({ h, url } = await serverWithRootfs('    maxRootStreams: 1\n    maxQueued: 3\n    maxQueuedPerAddress: 2\n    maxRetryAfterSeconds: 1\n'));
  });
  afterAll(async () => h?.close());

  it('follow the queue through a held stream, two waiters per address, both caps, and the waiters being served', async () => {
    const before = await scrape(url(1));
    expect(before.get('netboot_root_streams_active')?.type).toBe('gauge');
    expect(before.get('netboot_root_streams_queued')?.type).toBe('gauge');
    expect(before.get('netboot_root_stream_503_total')?.type).toBe('counter');
    expect(before.get('netboot_root_streams_preempted_total')?.type).toBe('counter');
    expect(before.get('netboot_root_stream_queue_wait_seconds')?.type).toBe('histogram');
    expect(sampleValue(before, 'netboot_root_streams_active')).toBe(0);
    expect(sampleValue(before, 'netboot_root_stream_queue_wait_seconds_count')).toBe(0);

    const first = await heldStream(url(1));
    expect(first.status).toBe('HTTP/1.1 200 OK');
    expect(await curlStatus(url(2))).toBe('503'); // queued 1 (127.0.0.1)
    expect(await curlStatus(url(3))).toBe('503'); // queued 2 (127.0.0.1)
    expect(await curlStatus(url(2))).toBe('503'); // came back: still waiting
    expect(await curlStatus(url(4))).toBe('503'); // 127.0.0.1 holds 2 places: address_full
    expect(await curlStatus(url(5), ['--interface', '127.0.0.2'])).toBe('503'); // queued 3
    expect(await curlStatus(url(6))).toBe('503'); // 3 places taken: queue_full
    // Not root streams: never counted.
    expect(await curlStatus(url(6), ['-I'])).toBe('200');
    expect(await curlStatus(url(6), ['-r', '0-65535'])).toBe('206');

    const busy = await scrape(url(1));
    expect(sampleValue(busy, 'netboot_root_streams_active')).toBe(1);
    expect(sampleValue(busy, 'netboot_root_streams_queued')).toBe(3);
    expect(sampleValue(busy, 'netboot_root_stream_503_total', { reason: 'wait' })).toBe(4);
    expect(sampleValue(busy, 'netboot_root_stream_503_total', { reason: 'address_full' })).toBe(1);
    expect(sampleValue(busy, 'netboot_root_stream_503_total', { reason: 'queue_full' })).toBe(1);
    expect(sampleValue(busy, 'netboot_root_stream_queue_wait_seconds_count')).toBe(0);

    await first.finish();
    const idle = await scrape(url(1));
    expect(sampleValue(idle, 'netboot_root_streams_active')).toBe(0);
    expect(sampleValue(idle, 'netboot_root_streams_queued')).toBe(3);

    // The waiters, in turn (curl honours Retry-After; each 503 on the way is one more `wait`).
    expect(await curlStatus(url(2), ['--retry', '10'])).toBe('200');
    expect(await curlStatus(url(3), ['--retry', '10'])).toBe('200');
    expect(await curlStatus(url(5), ['--retry', '10', '--interface', '127.0.0.2'])).toBe('200');

    const done = await scrape(url(1));
    expect(sampleValue(done, 'netboot_root_streams_active')).toBe(0);
    expect(sampleValue(done, 'netboot_root_streams_queued')).toBe(0);
    expect(sampleValue(done, 'netboot_root_stream_queue_wait_seconds_count')).toBe(3);
    expect(sampleValue(done, 'netboot_root_stream_queue_wait_seconds_sum')).toBeGreaterThan(0);
    expect(sampleValue(done, 'netboot_root_stream_503_total', { reason: 'wait' })).toBeGreaterThanOrEqual(4);
    expect(sampleValue(done, 'netboot_root_stream_503_total', { reason: 'address_full' })).toBe(1);
    expect(sampleValue(done, 'netboot_root_stream_503_total', { reason: 'queue_full' })).toBe(1);
    expect(sampleValue(done, 'netboot_root_streams_preempted_total')).toBe(0);
  }, 120_000);
});

describe('admission metrics: preemption', () => {
  let h: Harness;
  let url: (n: number) => string;
  beforeAll(async () => {
    ({ h, url } = await serverWithRootfs('    maxRootStreams: 1\n    maxRetryAfterSeconds: 1\n    preemptAfterSeconds: 1\n'));
  });
  afterAll(async () => h?.close());

  it('counts a stalled stream cut while a machine waits', async () => {
    const stalled = await heldStream(url(7));
    expect(stalled.status).toBe('HTTP/1.1 200 OK');
    // The waiter is held (or told to come back) until the stalled stream is cut; then the slot is its.
    const waiter = curlStatus(url(8), ['--retry', '10']);
    const preempted = async () => sampleValue(await scrape(url(7)), 'netboot_root_streams_preempted_total');
    await expect.poll(preempted, { timeout: 30_000 }).toBe(1);
    stalled.abandon();
    expect(await waiter).toBe('200');
    const after = await scrape(url(7));
    expect(sampleValue(after, 'netboot_root_streams_preempted_total')).toBe(1);
    expect(sampleValue(after, 'netboot_root_stream_queue_wait_seconds_count')).toBe(1);
  }, 120_000);
});
