import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ECANCELED, nativeSendfileCounters, nativeSendfileStatus, startNativeSend } from '../../server/http/native-sendfile.ts';
import { tempDir } from './fixtures.ts';

const status = nativeSendfileStatus();
const native = status.available;
const EPIPE = 32;
const ECONNRESET = 104;
const ENODATA = 61;

it('the sendfile addon is built and loads (required when CI is set)', () => {
  if (process.env.CI) expect(status).toEqual({ available: true });
  if (!native) console.warn(`sendfile addon not loaded, native tests skipped: ${status.reason}`);
});

const tmp = tempDir('netboot-sendfile-');
const content = randomBytes(24 << 20);
const path = join(tmp.path, 'blob');
let fileFd: number;
let listener: Server;
const accepted: Socket[] = [];

beforeAll(async () => {
  writeFileSync(path, content);
  fileFd = openSync(path, 'r');
  listener = createServer((socket) => accepted.push(socket));
  await new Promise<void>((done) => listener.listen(0, '127.0.0.1', done));
});
afterAll(async () => {
  for (const socket of accepted) socket.destroy();
  closeSync(fileFd);
  await new Promise((done) => listener.close(done));
  tmp.cleanup();
});

/** A connected loopback pair: `server` is the accepted side we send on, `client` reads. */
async function pair(): Promise<{ server: Socket; client: Socket; fd: number }> {
  const client = connect((listener.address() as { port: number }).port, '127.0.0.1');
  await new Promise<void>((done) => client.once('connect', done));
  const mine = () => accepted.find((socket) => socket.remotePort === client.localPort);
  await expect.poll(() => mine() !== undefined).toBe(true);
  const server = mine()!;
  // Resets are what some tests provoke: the JS side of either end may see ECONNRESET.
  for (const end of [server, client]) end.on('error', () => undefined);
  return { server, client, fd: (server as unknown as { _handle: { fd: number } })._handle.fd };
}

function readAll(client: Socket, bytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  return new Promise((resolve, reject) => {
    client.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      got += chunk.length;
      if (got >= bytes) resolve(Buffer.concat(chunks));
    });
    client.once('error', reject);
    client.once('close', () => resolve(Buffer.concat(chunks)));
  });
}

const openFds = () => readdirSync('/proc/self/fd').length;

describe.skipIf(!native)('netboot_sendfile addon', () => {
  it('sends a range byte for byte, and counts it', async () => {
    const { server, client, fd } = await pair();
    const before = nativeSendfileCounters()!;
    const offset = 1_234_567;
    const length = 9_000_001;
    const received = readAll(client, length);
    const job = startNativeSend(fd, fileFd, offset, length)!;
    expect(await job.result).toEqual({ bytes: length, errno: 0 });
    expect((await received).equals(content.subarray(offset, offset + length))).toBe(true);
    const after = nativeSendfileCounters()!;
    expect(after.started - before.started).toBe(1);
    expect(after.bytesSent - before.bytesSent).toBe(length);
    expect(after.activeJobs).toBe(0);
    server.destroy();
    client.destroy();
  });

  it('many jobs at once each get exactly their range', async () => {
    const jobs = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const { server, client, fd } = await pair();
        const offset = i * 500_000;
        const length = 3_000_000 + i;
        const received = readAll(client, length);
        const result = await startNativeSend(fd, fileFd, offset, length)!.result;
        const bytes = await received;
        server.destroy();
        client.destroy();
        return { result, same: bytes.equals(content.subarray(offset, offset + length)), length };
      }),
    );
    for (const job of jobs) {
      expect(job.result).toEqual({ bytes: job.length, errno: 0 });
      expect(job.same).toBe(true);
    }
  });

  it('runs jobs on a worker per core (at most 8), and counts each worker\'s bytes', async () => {
    const { server, client, fd } = await pair();
    const received = readAll(client, 1_000_000);
    expect(await startNativeSend(fd, fileFd, 0, 1_000_000)!.result).toEqual({ bytes: 1_000_000, errno: 0 });
    await received;
    const stats = nativeSendfileCounters()!;
    expect(stats.threads).toBeGreaterThanOrEqual(1);
    expect(stats.threads).toBeLessThanOrEqual(8);
    expect(stats.threadBytes).toHaveLength(stats.threads);
    expect(stats.threadBytes.reduce((a, b) => a + b, 0)).toBe(stats.bytesSent);
    server.destroy();
    client.destroy();
  });

  it('cancel under load: cancelled jobs end ECANCELED while the others on the same workers finish byte for byte', async () => {
    const fdsBefore = openFds();
    const pairs = await Promise.all(Array.from({ length: 16 }, () => pair()));
    const fdsWithPairs = openFds();
    const jobs = pairs.map(({ client, fd }, i) => {
      const stuck = i % 2 === 1;
      // A stuck job asks for more than the kernel buffers of a client that never reads can hold.
      const offset = stuck ? 0 : i * 100_003;
      const length = stuck ? content.length : 2_000_000 + i;
      if (stuck) client.pause();
      const received = stuck ? null : readAll(client, length);
      return { stuck, offset, length, received, job: startNativeSend(fd, fileFd, offset, length)! };
    });
    expect(nativeSendfileCounters()!.activeJobs).toBe(16);
    for (const j of jobs) if (j.stuck) j.job.cancel();
    for (const j of jobs) {
      const result = await j.job.result;
      if (j.stuck) {
        expect(result.errno).toBe(ECANCELED);
        expect(result.bytes).toBeLessThan(j.length);
      } else {
        expect(result).toEqual({ bytes: j.length, errno: 0 });
        expect((await j.received!).equals(content.subarray(j.offset, j.offset + j.length))).toBe(true);
      }
    }
    expect(nativeSendfileCounters()!.activeJobs).toBe(0);
    expect(openFds()).toBe(fdsWithPairs); // every duplicated socket and file closed
    for (const { server, client } of pairs) {
      server.destroy();
      client.destroy();
    }
    await expect.poll(openFds).toBe(fdsBefore);
  });

  it('cancel stops a job stuck on a client that does not read, and closes its duplicated fds', async () => {
    const { server, client, fd } = await pair();
    client.pause();
    const fdsBefore = openFds();
    const job = startNativeSend(fd, fileFd, 0, content.length)!;
    expect(openFds()).toBe(fdsBefore + 2); // the duplicated socket and file
    // Wait until the kernel's buffers are full and the job sits at EAGAIN.
    let last = -1;
    await expect.poll(() => {
      const sent = nativeSendfileCounters()!.bytesSent;
      const still = sent === last;
      last = sent;
      return still;
    }, { interval: 100, timeout: 5000 }).toBe(true);
    expect(nativeSendfileCounters()!.activeJobs).toBe(1);
    job.cancel();
    const result = await job.result;
    expect(result.errno).toBe(ECANCELED);
    expect(result.bytes).toBeGreaterThan(0);
    expect(result.bytes).toBeLessThan(content.length);
    expect(openFds()).toBe(fdsBefore);
    expect(nativeSendfileCounters()!.activeJobs).toBe(0);
    job.cancel(); // after the end: a no-op
    server.destroy();
    client.destroy();
  });

  it('a peer that resets the connection ends the job with EPIPE or ECONNRESET', async () => {
    const { server, client, fd } = await pair();
    client.pause();
    const job = startNativeSend(fd, fileFd, 0, content.length)!;
    await expect.poll(() => nativeSendfileCounters()!.bytesSent > 0).toBe(true);
    client.resetAndDestroy();
    const result = await job.result;
    expect([EPIPE, ECONNRESET]).toContain(result.errno);
    expect(result.bytes).toBeLessThan(content.length);
    server.destroy();
  });

  it('the socket closed on the JS side mid-job: the job keeps its own duplicate, a reused fd number is never written', async () => {
    const { server, client, fd } = await pair();
    client.pause();
    const length = 16 << 20;
    const job = startNativeSend(fd, fileFd, 0, length)!;
    server.destroy();
    await new Promise((done) => setImmediate(done)); // libuv closes the fd on the next loop turn
    const victimPath = join(tmp.path, 'victim');
    const victim = openSync(victimPath, 'w');
    try {
      expect(victim).toBe(fd); // the lowest free number: the one Node's socket had
      const received = readAll(client, length);
      client.resume();
      expect(await job.result).toEqual({ bytes: length, errno: 0 });
      expect((await received).equals(content.subarray(0, length))).toBe(true);
      expect(readdirSync(tmp.path)).toContain('victim');
      expect(statSync(victimPath).size).toBe(0);
    } finally {
      closeSync(victim);
      client.destroy();
    }
  });

  it('a range past the end of the file ends with ENODATA after the bytes that exist', async () => {
    const { server, client, fd } = await pair();
    const offset = content.length - 1000;
    const received = readAll(client, 1000);
    const result = await startNativeSend(fd, fileFd, offset, 5000)!.result;
    expect(result).toEqual({ bytes: 1000, errno: ENODATA });
    expect((await received).equals(content.subarray(offset))).toBe(true);
    server.destroy();
    client.destroy();
  });

  it('refuses what is not a non-blocking stream socket, and bad arguments', () => {
    expect(() => startNativeSend(fileFd, fileFd, 0, 10)).toThrow(/not a socket/);
    expect(() => startNativeSend(-1, fileFd, 0, 10)).toThrow();
    expect(() => startNativeSend(0, fileFd, -5, 10)).toThrow(TypeError);
  });

  const addon = resolve(import.meta.dirname, '../../build/Release/netboot_sendfile.node');
  /** A child node that loads the addon, sends `length` bytes of the blob to a loopback client, then runs `after`. */
  function child(clientReads: boolean, after: string): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
    const script = `
      const net = require('node:net'); const fs = require('node:fs');
      const addon = require(${JSON.stringify(addon)});
      const file = fs.openSync(${JSON.stringify(path)}, 'r');
      const srv = net.createServer((s) => {
        srv.close();
        const job = addon.start(s._handle.fd, file, 0, ${content.length}, (bytes, errno) => {
          console.log('done', bytes, errno); s.end(); fs.closeSync(file);
        });
        ${after}
      });
      srv.listen(0, '127.0.0.1', () => {
        const c = net.connect(srv.address().port, '127.0.0.1');
        let got = 0;
        ${clientReads ? "c.on('data', (d) => { got += d.length; }); c.on('end', () => { console.log('client got', got); c.destroy(); });" : 'c.pause();'}
      });`;
    return new Promise((done) => {
      const proc = execFile(process.execPath, ['-e', script], { timeout: 20_000 }, (_err, stdout, stderr) => done({ code: proc.exitCode, signal: proc.signalCode, stdout, stderr }));
    });
  }

  it('spreads jobs started together evenly over its workers (NETBOOT_SENDFILE_THREADS=4), each range byte for byte', async () => {
    const jobs = 32;
    const script = `
      const net = require('node:net'); const fs = require('node:fs'); const crypto = require('node:crypto');
      const addon = require(${JSON.stringify(addon)});
      const file = fs.openSync(${JSON.stringify(path)}, 'r');
      const content = fs.readFileSync(${JSON.stringify(path)});
      const sockets = new Map();
      const srv = net.createServer((s) => { sockets.set(s.remotePort, s); if (sockets.size === ${jobs}) startAll(); });
      const clients = [];
      const results = [];
      let ended = 0;
      function startAll() {
        // One synchronous loop: no completion is delivered in between, so the spread depends on nothing else.
        clients.forEach((c, i) => {
          const offset = i * 100003, length = 1000000 + i * 4099;
          const s = sockets.get(c.localPort);
          addon.start(s._handle.fd, file, offset, length, (bytes, errno) => { results[i] = { bytes, errno, length }; s.end(); });
          const hash = crypto.createHash('sha256');
          c.on('data', (d) => hash.update(d));
          c.on('end', () => {
            results[i].same = hash.digest('hex') === crypto.createHash('sha256').update(content.subarray(offset, offset + length)).digest('hex');
            c.destroy();
            if (++ended === ${jobs}) { srv.close(); console.log(JSON.stringify({ stats: addon.stats(), results })); }
          });
        });
      }
      srv.listen(0, '127.0.0.1', () => { for (let i = 0; i < ${jobs}; i++) clients.push(net.connect(srv.address().port, '127.0.0.1')); });`;
    const { stdout } = await new Promise<{ stdout: string }>((done, fail) =>
      execFile(process.execPath, ['-e', script], { timeout: 30_000, env: { ...process.env, NETBOOT_SENDFILE_THREADS: '4' } }, (err, stdout) => (err ? fail(err) : done({ stdout }))),
    );
    const report = JSON.parse(stdout) as { stats: { threads: number; threadBytes: number[]; bytesSent: number }; results: { bytes: number; errno: number; length: number; same: boolean }[] };
    expect(report.results).toHaveLength(jobs);
    for (const r of report.results) expect(r).toEqual({ bytes: r.length, errno: 0, length: r.length, same: true });
    expect(report.stats.threads).toBe(4);
    // 8 jobs each: job i went to worker i mod 4 (least loaded, ties in turn).
    const perWorker = [0, 1, 2, 3].map((w) => report.results.filter((_, i) => i % 4 === w).reduce((sum, r) => sum + r.length, 0));
    expect(report.stats.threadBytes).toEqual(perWorker);
    expect(report.stats.bytesSent).toBe(perWorker.reduce((a, b) => a + b, 0));
  });

  it('an idle engine does not keep the process alive: the process exits by itself after its jobs', async () => {
    const result = await child(true, '');
    expect(result.signal).toBeNull(); // not killed by the timeout
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(`done ${content.length} 0\nclient got ${content.length}\n`);
  });

  it('a worker thread torn down with a job in flight stops its engine and closes every fd', async () => {
    // The worker sends to our listener, whose accepted sockets nobody reads: the job stalls and
    // outlives the worker's own socket handle, so only the engine's teardown can close its fds.
    const port = (listener.address() as { port: number }).port;
    const script = `
      const net = require('node:net'); const fs = require('node:fs'); const { parentPort } = require('node:worker_threads');
      const addon = require(${JSON.stringify(addon)});
      const file = fs.openSync(${JSON.stringify(path)}, 'r');
      const c = net.connect(${port}, '127.0.0.1', () => {
        addon.start(c._handle.fd, file, 0, ${content.length}, () => parentPort.postMessage('done early'));
        const poll = setInterval(() => {
          if (addon.stats().bytesSent > 0 && addon.activeJobs() === 1) { clearInterval(poll); parentPort.postMessage('stuck'); }
        }, 20);
      });`;
    const fdsBefore = openFds();
    const acceptedBefore = accepted.length;
    for (let round = 0; round < 3; round++) {
      const worker = new Worker(script, { eval: true });
      expect(await new Promise((done) => worker.once('message', done))).toBe('stuck');
      await worker.terminate();
    }
    for (const socket of accepted.slice(acceptedBefore)) socket.destroy();
    await expect.poll(openFds).toBe(fdsBefore);
  });

  it('process.exit with a job in flight exits cleanly', async () => {
    const result = await child(false, 'setTimeout(() => process.exit(7), 200);');
    expect(result.signal).toBeNull();
    expect(result.code).toBe(7);
    expect(result.stderr).toBe('');
  });
});
