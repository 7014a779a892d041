import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bufferFile, dirSource, mountSources, type TftpFile, type TftpFileSource } from '../../server/tftp/files.ts';
import type { TransferEvent } from '../../server/tftp/server.ts';
import { TftpThread } from '../../server/tftp/thread.ts';
import { capturedLog } from '../lab/captured-log.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { runClient, sha256, sha256File } from './helpers.ts';

describe('TftpThread: TFTP on its own thread', () => {
  let dir: string;
  let out: string;
  let thread: TftpThread;
  let port: number;
  const onDisk = randomBytes(300_000);
  const inMemory = randomBytes(50_000);
  const readOnly = randomBytes(20_000);
  const large = randomBytes(4 << 20);
  const events: TransferEvent[] = [];
  const { lines: logLines, logger: log } = capturedLog<{ level: number; msg: string; service?: string; phase?: string; path?: string }>({ level: 'debug', base: { service: 'tftp' } });
  let opened = 0;
  let closed = 0;
  let largeOpened: () => void = () => undefined;

  /** Counts opens and closes: every file the thread was given must be given back. */
  const counted =
    (source: TftpFileSource, onOpen?: () => void): TftpFileSource =>
    async (path, client) => {
      const file = await source(path, client);
      if (file === null) return null;
      opened++;
      onOpen?.();
      return { ...file, close: async () => void (closed++, await file.close()) };
    };

  /** A file with neither an fd nor its bytes: the main thread reads it for the thread. */
  const readOnlyFile = (): TftpFile => ({ size: readOnly.length, read: async (offset, length) => readOnly.subarray(offset, offset + length), close: async () => undefined });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tftp-thread-root-'));
    out = await mkdtemp(join(tmpdir(), 'tftp-thread-out-'));
    await writeFile(join(dir, 'disk.bin'), onDisk);
    await writeFile(join(dir, 'large.bin'), large);
    thread = new TftpThread({
      host: '127.0.0.1',
      port: 0,
      log,
      onTransfer: (event) => events.push(event),
      source: mountSources({
        'large/': counted(dirSource(dir), () => largeOpened()),
        '': counted(
          mountSources({
            'mem/': async (path) => (path === 'file.bin' ? bufferFile(inMemory) : null),
            'ro/': async (path) => (path === 'file.bin' ? readOnlyFile() : null),
            '': dirSource(dir),
          }),
        ),
      }),
    });
    port = (await thread.start()).port;
  });

  afterAll(async () => {
    await thread.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(out, { recursive: true, force: true });
  });

  it('serves a file by its fd, one from memory and one only readable through read(); reports each transfer and logs with the main logger', async () => {
    for (const [name, content] of [
      ['disk.bin', onDisk],
      ['mem/file.bin', inMemory],
      ['ro/file.bin', readOnly],
    ] as const) {
      const file = join(out, name.replace(/\//g, '_'));
      const r = await runClient('curl', ['-sS', '-m', '30', '--tftp-blksize', '1468', '-o', file, `tftp://127.0.0.1:${port}/${name}`]);
      expect(r.code, r.stderr).toBe(0);
      expect(await sha256File(file)).toBe(sha256(content));
      await waitUntil(() => events.some((e) => e.path === name && e.outcome === 'complete'), `transfer event for ${name}`);
      expect(events.find((e) => e.path === name)).toMatchObject({ bytes: content.length, blksize: 1468 });
    }
    const missing = await runClient('curl', ['-sS', '-m', '30', '-o', join(out, 'none'), `tftp://127.0.0.1:${port}/none.bin`]);
    expect(missing.code).not.toBe(0);
    await waitUntil(() => events.some((e) => e.path === 'none.bin' && e.outcome === 'refused'), 'refusal event');
    // The thread's lines come out of this logger: its bindings, the thread's fields, the level kept.
    const complete = logLines.find((l) => l.msg === 'tftp transfer complete' && l.path === 'disk.bin');
    expect(complete).toMatchObject({ level: 30, service: 'tftp', phase: 'tftp' });
    expect(logLines.some((l) => l.level === 20 && l.msg === 'tftp transfer starting')).toBe(true);
    expect(logLines.some((l) => l.msg === 'tftp request refused')).toBe(true);
    await waitUntil(() => closed === opened, 'every file given back');
  });

  it('keeps sending while the main thread is blocked', async () => {
    // A lockstep transfer of 4 MiB at 512-byte blocks: 8193 round trips. Once the first blocks
    // are in, the main thread blocks (synchronously) until the client has every byte: on the
    // main thread's event loop the transfer could not move at all, and this would end at the deadline.
    const file = join(out, 'large.bin');
    const isOpen = new Promise<void>((resolve) => (largeOpened = resolve));
    const client = spawn('curl', ['-sS', '-m', '120', '-o', file, `tftp://127.0.0.1:${port}/large/large.bin`], { stdio: 'ignore' });
    const exited = new Promise<number | null>((resolve) => client.once('exit', resolve));
    await isOpen;
    const received = () => {
      try {
        return statSync(file).size;
      } catch {
        return 0;
      }
    };
    await waitUntil(() => received() > 0, 'the first blocks at the client');
    const deadline = Date.now() + 60_000;
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    let size = 0;
    while (size < large.length && Date.now() < deadline) {
      Atomics.wait(sleeper, 0, 0, 10); // sleeps without returning to the event loop
      size = received();
    }
    expect(size).toBe(large.length);
    expect(await exited).toBe(0);
    expect(sha256(await readFile(file))).toBe(sha256(large));
    await waitUntil(() => closed === opened, 'every file given back');
  });
});
