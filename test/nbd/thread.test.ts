import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NbdConnectionEvent } from '../../server/nbd/server.ts';
import { NbdThread, type NbdReadBatch } from '../../server/nbd/thread.ts';
import { capturedLog } from '../lab/captured-log.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { RawClient } from './helpers.ts';

const run = promisify(execFile);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const SIZE = 16 * 1024 * 1024 + 4096;

describe('NbdThread: NBD on its own thread', () => {
  let dir: string;
  let thread: NbdThread;
  let port: number;
  const image = randomBytes(SIZE);
  const connections: NbdConnectionEvent[] = [];
  const batches: NbdReadBatch[] = [];
  const lookedUp: string[] = [];
  const { lines: logLines, logger: log } = capturedLog<{ level: number; msg: string; service?: string; export?: string }>({ level: 'debug', base: { service: 'nbd' } });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nbd-thread-'));
    await writeFile(join(dir, 'img'), image);
    thread = new NbdThread({
      host: '127.0.0.1',
      port: 0,
      log,
      // Asked of the main thread, and answered asynchronously, as a real lookup may be.
      lookupExport: async (name) => {
        lookedUp.push(name);
        await new Promise((resolve) => setImmediate(resolve));
        return name === 'img' ? { path: join(dir, 'img'), size: SIZE } : null;
      },
      onConnection: (event) => connections.push(event),
      onReads: (batch) => batches.push(batch),
    });
    port = (await thread.start()).port;
  });

  afterAll(async () => {
    await thread?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves nbdcopy byte-identical while the main thread is blocked; connections and reads reach the main thread', async () => {
    const out = join(dir, 'copy.bin');
    // One connection: its export lookup is the main thread's, so it must be open before this thread blocks.
    const client = spawn('nbdcopy', ['--connections=1', `nbd://127.0.0.1:${port}/img`, out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    client.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => client.once('exit', resolve));
    await waitUntil(() => connections.some((e) => e.event === 'open' && e.export === 'img'), 'nbdcopy connected');
    // Blocks (synchronously, never returning to the event loop) until nbdcopy has exited: with the
    // server on this thread, its reads could not be answered and this would end at the deadline.
    const finished = () => readFileSync(`/proc/${client.pid}/stat`, 'latin1').replace(/^.*\) /, '').startsWith('Z');
    const deadline = Date.now() + 60_000;
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    while (!finished() && Date.now() < deadline) Atomics.wait(sleeper, 0, 0, 10);
    expect(finished(), 'nbdcopy finished while the main thread was blocked').toBe(true);
    expect(await exited, stderr).toBe(0);
    expect(sha256(await readFile(out))).toBe(sha256(image));

    await waitUntil(() => connections.some((e) => e.event === 'close' && e.export === 'img'), 'the close event');
    expect(lookedUp).toContain('img');
    const opened = connections.filter((e) => e.event === 'open' && e.export === 'img').length;
    expect(opened).toBeGreaterThanOrEqual(1);
    const closes = () => connections.filter((e) => e.event === 'close' && e.export === 'img');
    await waitUntil(() => closes().length === opened, 'every connection closed');
    // The batches add up to what the connections say they sent, and that is the whole image at least.
    const sentByConnections = closes().reduce((sum, e) => sum + e.bytes, 0);
    await waitUntil(() => batches.reduce((sum, b) => sum + (new Map(b.bytesByExport).get('img') ?? 0), 0) === sentByConnections, 'read batches adding up to the bytes sent');
    expect(sentByConnections).toBeGreaterThanOrEqual(SIZE);
    const reads = batches.reduce((n, b) => n + b.latenciesMs.length, 0);
    expect(reads).toBe(closes().reduce((n, e) => n + e.requests, 0));
    expect(thread.connectedExports().get('img')).toBeUndefined();
  });

  it('counts the connections reading an export, refuses an unknown one, and logs through the main thread', async () => {
    const reader = await RawClient.connect(port);
    expect(await reader.open('img')).toBe(SIZE);
    await waitUntil(() => thread.connectedExports().get('img') === 1, 'one reader of img');
    const { error, data } = await reader.readAt(4096, 65536);
    expect(error).toBe(0);
    expect(data.equals(image.subarray(4096, 4096 + 65536))).toBe(true);
    reader.socket.destroy();
    await waitUntil(() => thread.connectedExports().get('img') === undefined, 'no reader of img');

    await expect(run('nbdinfo', [`nbd://127.0.0.1:${port}/nope`])).rejects.toThrow();
    expect(lookedUp).toContain('nope');
    await waitUntil(() => logLines.some((l) => l.msg === 'nbd unknown export' && l.export === 'nope'), 'the unknown export logged');
    // Relayed with the main thread logger's bindings.
    expect(logLines.find((l) => l.msg === 'nbd client connected to export')).toMatchObject({ service: 'nbd', level: 30 });
  });

  it('a thread that dies is restarted, serves again, and its connections are no longer counted', async () => {
    const reader = await RawClient.connect(port);
    expect(await reader.open('img')).toBe(SIZE);
    await waitUntil(() => thread.connectedExports().get('img') === 1, 'one reader of img');
    await (thread as unknown as { worker: Worker }).worker.terminate();
    await reader.closed;
    await waitUntil(() => logLines.some((l) => l.msg === 'nbd thread exited: restarting it' && l.level === 50), 'the restart logged');
    await waitUntil(() => thread.address !== null && thread.address.port !== port, 'listening again (port 0: a new port)');
    expect(thread.connectedExports().size).toBe(0);
    port = thread.address!.port;
    const again = await RawClient.connect(port);
    expect(await again.open('img')).toBe(SIZE);
    const { error, data } = await again.readAt(0, 4096);
    expect(error).toBe(0);
    expect(data.equals(image.subarray(0, 4096))).toBe(true);
    again.socket.destroy();
  });
});
