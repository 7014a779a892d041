import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { TftpPacket } from '../../server/tftp/codec.ts';
import { dirSource, generatedSource, mountSources, type TftpFileSource } from '../../server/tftp/files.ts';
import { TftpServer, type TftpServerOptions, type TransferEvent } from '../../server/tftp/server.ts';
import type { SessionLimits } from '../../server/tftp/session.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { RawPeer, runClient, sha256, sha256File } from './helpers.ts';

let dir: string;
let out: string;
let server: TftpServer;
let port: number;
const events: TransferEvent[] = [];
const logLines: { level: number; msg: string; client?: { port: number } }[] = [];
const small = randomBytes(100_000);
// More than 65535 blocks at 512 bytes: the block number must roll over.
const big = randomBytes(512 * 65536 + 777);
const bootScript = '#!ipxe\necho generated\n';

// Events of earlier tests are skipped: the kernel may hand a later peer the same ephemeral port.
let firstEventOfThisTest = 0;
beforeEach(() => {
  firstEventOfThisTest = events.length;
});

function eventFor(clientPort: number): TransferEvent | undefined {
  return events.slice(firstEventOfThisTest).find((e) => e.client.port === clientPort);
}

/** The transfer's end event; the silent-client case takes the whole backoff (0.3+0.6+1.2+2.4 s) to get there. */
async function waitForEvent(clientPort: number): Promise<TransferEvent> {
  await waitUntil(() => eventFor(clientPort) !== undefined, `transfer event for client port ${clientPort}`);
  return eventFor(clientPort)!;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tftp-root-'));
  out = await mkdtemp(join(tmpdir(), 'tftp-out-'));
  await mkdir(join(dir, 'images/abc'), { recursive: true });
  await writeFile(join(dir, 'small.bin'), small);
  await writeFile(join(dir, 'big.bin'), big);
  await writeFile(join(dir, 'images/abc/vmlinuz'), small.subarray(0, 5000));
  await symlink('/etc/passwd', join(dir, 'escape'));
  await symlink('..', join(dir, 'images/up'));
  await symlink('small.bin', join(dir, 'alias.bin'));
  const source = mountSources({
    '': dirSource(dir),
    'machines/': generatedSource(async (path) => (path === '52-54-00-12-34-56/boot.ipxe' ? bootScript : null)),
  });
  server = serverOn(source, { timeoutMs: 300, maxRetries: 3 });
  port = (await server.start()).port;
});

/** A server on this file's tree, 4 transfers at most, reporting into `events` and `logLines`. */
function serverOn(source: TftpFileSource, limits: Partial<SessionLimits>, options: Partial<TftpServerOptions> = {}): TftpServer {
  return new TftpServer({
    host: '127.0.0.1',
    port: 0,
    source,
    maxTransfers: 4,
    ...options,
    limits,
    onTransfer: (e) => events.push(e),
    log: pino({ level: 'debug' }, { write: (line: string) => void logLines.push(JSON.parse(line)) }),
  });
}

afterAll(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
  await rm(out, { recursive: true, force: true });
});

describe('interop with real clients', () => {
  it('curl with --tftp-blksize 1468', async () => {
    const file = join(out, 'curl-small');
    const r = await runClient('curl', ['-sS', '-m', '30', '--tftp-blksize', '1468', '-o', file, `tftp://127.0.0.1:${port}/small.bin`]);
    expect(r.stderr).toBe('');
    expect(await sha256File(file)).toBe(sha256(small));
  });

  it('curl fetches a generated per-machine script and a file under a subdirectory', async () => {
    const script = join(out, 'boot.ipxe');
    await runClient('curl', ['-sS', '-m', '30', '-o', script, `tftp://127.0.0.1:${port}/machines/52-54-00-12-34-56/boot.ipxe`]);
    expect(await sha256File(script)).toBe(sha256(Buffer.from(bootScript)));
    const kernel = join(out, 'vmlinuz');
    await runClient('curl', ['-sS', '-m', '30', '-o', kernel, `tftp://127.0.0.1:${port}/images/abc/vmlinuz`]);
    expect(await sha256File(kernel)).toBe(sha256(small.subarray(0, 5000)));
  });

  it('atftp with windowsize 16 fetches the > 32 MB file byte-identical', async () => {
    const file = join(out, 'atftp-big');
    const r = await runClient('atftp', ['--option', 'windowsize 16', '--option', 'blksize 1468', '-g', '-r', 'big.bin', '-l', file, '127.0.0.1', String(port)], 120_000);
    expect(r.code).toBe(0);
    expect(await sha256File(file)).toBe(sha256(big));
    const e = events.find((ev) => ev.path === 'big.bin' && ev.windowsize === 16);
    expect(e).toMatchObject({ outcome: 'complete', bytes: big.length, blksize: 1468 });
  });

  it('tftp-hpa fetches the > 32 MB file at blksize 512 (block number rollover) byte-identical', async () => {
    const file = join(out, 'hpa-big');
    const r = await runClient('tftp', ['-m', 'binary', '127.0.0.1', String(port), '-c', 'get', 'big.bin', file], 180_000);
    expect(r.stdout + r.stderr).not.toMatch(/error|timed out/i);
    expect(await sha256File(file)).toBe(sha256(big));
    expect(events.find((ev) => ev.path === 'big.bin' && ev.blksize === 512)).toMatchObject({ outcome: 'complete', bytes: big.length });
  }, 180_000);

  it('curl follows a symlink that stays inside the root', async () => {
    const file = join(out, 'alias');
    await runClient('curl', ['-sS', '-m', '30', '-o', file, `tftp://127.0.0.1:${port}/alias.bin`]);
    expect(await sha256File(file)).toBe(sha256(small));
  });
});

describe('protocol rules', () => {
  it('a stranger transfer ID gets ERROR 5 and the transfer completes unharmed', async () => {
    const client = await RawPeer.open();
    const stranger = await RawPeer.open();
    try {
      await client.send({ op: 'RRQ', filename: 'small.bin', mode: 'octet', options: [] }, port);
      const chunks: Buffer[] = [];
      let strangerSent = false;
      for (;;) {
        const r = await client.next();
        if (!r || r.packet.op !== 'DATA') throw new Error(`expected DATA, got ${JSON.stringify(r?.packet)}`);
        chunks.push(r.packet.data);
        if (!strangerSent) {
          strangerSent = true;
          // The stranger acknowledges block 1 on the transfer's port, as if it were the client.
          await stranger.send({ op: 'ACK', block: 1 }, r.from.port);
          const answer = await stranger.next();
          expect(answer?.packet).toEqual({ op: 'ERROR', code: 5, message: 'Unknown transfer ID' });
          expect(answer?.from.port).toBe(r.from.port);
        }
        await client.send({ op: 'ACK', block: r.packet.block }, r.from.port);
        if (r.packet.data.length < 512) break;
      }
      expect(sha256(Buffer.concat(chunks))).toBe(sha256(small));
      expect(await waitForEvent(client.port)).toMatchObject({ outcome: 'complete', bytes: small.length });
      expect(client.malformed).toEqual([]);
    } finally {
      client.close();
      stranger.close();
    }
  });

  it('refuses WRQ (raw and from tftp-hpa put)', async () => {
    const peer = await RawPeer.open();
    try {
      await peer.send({ op: 'WRQ', filename: 'new.bin', mode: 'octet', options: [] }, port);
      const r = await peer.next();
      expect(r?.packet).toMatchObject({ op: 'ERROR', code: 2 });
    } finally {
      peer.close();
    }
    await writeFile(join(out, 'upload'), 'data');
    const put = await runClient('tftp', ['-m', 'binary', '127.0.0.1', String(port), '-c', 'put', join(out, 'upload'), 'upload'], 20_000);
    expect(put.stdout + put.stderr).toMatch(/read-only/);
  });

  it('refuses netascii with a clear error', async () => {
    const peer = await RawPeer.open();
    try {
      await peer.send({ op: 'RRQ', filename: 'small.bin', mode: 'netascii', options: [] }, port);
      expect((await peer.next())?.packet).toEqual({ op: 'ERROR', code: 0, message: 'Only octet mode is supported (got netascii)' });
    } finally {
      peer.close();
    }
  });

  const traversals: [string, number][] = [
    ['../etc/passwd', 2],
    ['images/../../etc/passwd', 2],
    ['/etc/passwd', 1], // a leading '/' means the tree's root: there is no etc/ there
    ['escape', 1], // symlink to /etc/passwd
    ['images/up/../../etc/passwd', 2],
    ['images/up/small.bin', 0], // a symlink inside the root: allowed
    ['..\\etc\\passwd', 2],
    ['machines/../escape', 2],
  ];
  for (const [name, code] of traversals) {
    it(`path ${JSON.stringify(name)} -> ${code === 0 ? 'served' : `ERROR ${code}`}`, async () => {
      const peer = await RawPeer.open();
      try {
        await peer.send({ op: 'RRQ', filename: name, mode: 'octet', options: [] }, port);
        const r = await peer.next();
        if (code === 0) expect(r?.packet).toMatchObject({ op: 'DATA', block: 1 });
        else expect(r?.packet).toMatchObject({ op: 'ERROR', code });
        if (r?.packet.op === 'DATA') await peer.send({ op: 'ERROR', code: 0, message: 'enough' }, r.from.port);
      } finally {
        peer.close();
      }
    });
  }

  it('curl cannot fetch /etc/passwd through the URL either', async () => {
    const r = await runClient('curl', ['-sS', '-m', '10', '-o', join(out, 'passwd'), `tftp://127.0.0.1:${port}/../etc/passwd`]);
    expect(r.code).not.toBe(0);
    const r2 = await runClient('curl', ['-sS', '-m', '10', '-o', join(out, 'passwd2'), `tftp://127.0.0.1:${port}/%2e%2e/etc/passwd`]);
    expect(r2.code).not.toBe(0);
  });

  it('the UEFI tsize probe ended with ERROR 8 is a normal "probe" outcome', async () => {
    const peer = await RawPeer.open();
    try {
      await peer.send({ op: 'RRQ', filename: 'small.bin', mode: 'octet', options: [{ name: 'tsize', value: '0' }, { name: 'blksize', value: '1468' }] }, port);
      const r = await peer.next();
      expect(r?.packet).toEqual({ op: 'OACK', options: [{ name: 'tsize', value: String(small.length) }, { name: 'blksize', value: '1468' }] });
      await peer.send({ op: 'ERROR', code: 8, message: 'User aborted download' }, r!.from.port);
      expect(await waitForEvent(peer.port)).toMatchObject({ outcome: 'probe', path: 'small.bin', bytes: 0 });
      // Logged at debug (20), nothing at warn or above for this client.
      const mine = logLines.filter((l) => l.client?.port === peer.port);
      expect(mine.some((l) => l.level === 20 && /probe/.test(l.msg))).toBe(true);
      expect(mine.filter((l) => l.level >= 40)).toEqual([]);
    } finally {
      peer.close();
    }
  });

  it('over the limit RRQs wait unanswered, first come first served (a retransmission keeps its place), and start as slots free; beyond the wait bound they are refused clearly', async () => {
    // Its own server, whose transfers wait a minute before a retransmission: the holders keep
    // their slots however long the rest of the test takes on a busy machine.
    const busy = serverOn(dirSource(dir), { timeoutMs: 60_000, maxTimeoutMs: 60_000, maxRetries: 3 }, { maxWaiting: 4 });
    const busyPort = (await busy.start()).port;
    const holders = await Promise.all(Array.from({ length: 4 }, () => RawPeer.open()));
    const queue = await Promise.all(Array.from({ length: 5 }, () => RawPeer.open()));
    const logged = (clientPort: number, pattern: RegExp) => logLines.filter((l) => l.client?.port === clientPort && pattern.test(l.msg)).length;
    const rrq: TftpPacket = { op: 'RRQ', filename: 'small.bin', mode: 'octet', options: [] };
    try {
      // Four transfers that never ACK fill the limit.
      const firsts = [];
      for (const h of holders) {
        await h.send(rrq, busyPort);
        firsts.push(await h.next());
      }
      expect(firsts.every((f) => f?.packet.op === 'DATA')).toBe(true);
      expect(busy.activeTransfers).toBe(4);
      // Four wait, in order; the fifth is over maxWaiting: an ERROR that names both limits.
      for (const q of queue.slice(0, 4)) {
        await q.send(rrq, busyPort);
        await waitUntil(() => logged(q.port, /waits for a transfer slot/) === 1, `client port ${q.port} waiting`);
      }
      expect(busy.waitingRequests).toBe(4);
      await queue[4]!.send(rrq, busyPort);
      const refused = await queue[4]!.next();
      expect(refused?.packet).toMatchObject({ op: 'ERROR', code: 0 });
      expect(refused?.packet.op === 'ERROR' && refused.packet.message).toMatch(/busy: 4 transfers in progress and 4 waiting/i);
      // The first in line retransmits: still one place, still first.
      await queue[0]!.send(rrq, busyPort);
      await waitUntil(() => logged(queue[0]!.port, /retransmitted while waiting/) === 1, 'the retransmission seen');
      expect(busy.waitingRequests).toBe(4);
      // Each slot that frees goes to the oldest waiting request, which gets its first DATA from a new transfer ID.
      for (let i = 0; i < 2; i++) {
        await holders[i]!.send({ op: 'ERROR', code: 0, message: 'bye' }, firsts[i]!.from.port);
        expect((await queue[i]!.next())?.packet).toMatchObject({ op: 'DATA', block: 1 });
        expect(busy.waitingRequests).toBe(3 - i);
      }
      expect(busy.activeTransfers).toBe(4);
    } finally {
      for (const p of [...holders, ...queue]) p.close();
      await busy.stop();
    }
  });

  it('a retransmitted RRQ from the same client port does not start a second transfer', async () => {
    const peer = await RawPeer.open();
    try {
      const rrq: TftpPacket = { op: 'RRQ', filename: 'small.bin', mode: 'octet', options: [] };
      await peer.send(rrq, port);
      await peer.send(rrq, port);
      const first = await peer.next();
      expect(first?.packet).toMatchObject({ op: 'DATA', block: 1 });
      // Only one transfer exists: nothing else arrives before that transfer's own retransmission
      // (due after 300 ms; the wait only guards against a hang, the next packet ends it).
      const second = await peer.next(30_000);
      expect(second?.from.port).toBe(first?.from.port);
      await peer.send({ op: 'ERROR', code: 0, message: 'done' }, first!.from.port);
    } finally {
      peer.close();
    }
  });

  it('a client whose port closed ends the transfer at the first retransmission (ICMP port unreachable)', async () => {
    const peer = await RawPeer.open();
    const clientPort = peer.port;
    await peer.send({ op: 'RRQ', filename: 'small.bin', mode: 'octet', options: [] }, port);
    expect((await peer.next())?.packet).toMatchObject({ op: 'DATA', block: 1 });
    peer.close();
    const e = await waitForEvent(clientPort);
    expect(e).toMatchObject({ outcome: 'client-error', detail: 'client error 0: client port unreachable', bytes: 0 });
  });

  it('a client that goes silent times out after the retries', async () => {
    const peer = await RawPeer.open();
    try {
      await peer.send({ op: 'RRQ', filename: 'small.bin', mode: 'octet', options: [] }, port);
      const e = await waitForEvent(peer.port);
      expect(e).toMatchObject({ outcome: 'timeout', bytes: 0 });
    } finally {
      peer.close();
    }
  });
});

describe('IPv6', () => {
  it('serves over [::1] with the same transfer-ID handling', async () => {
    const s = new TftpServer({ host: '::1', port: 0, source: dirSource(dir) });
    const p = (await s.start()).port;
    try {
      const file = join(out, 'v6');
      const r = await runClient('curl', ['-sS', '-m', '30', '--tftp-blksize', '1468', '-o', file, `tftp://[::1]:${p}/small.bin`]);
      expect(r.stderr).toBe('');
      expect(await sha256File(file)).toBe(sha256(small));
    } finally {
      await s.stop();
    }
  });
});

describe('lifecycle', () => {
  it('stop() closes the request socket and every transfer socket', async () => {
    const s = new TftpServer({ host: '127.0.0.1', port: 0, source: dirSource(dir), limits: { timeoutMs: 5000 } });
    const p = (await s.start()).port;
    const peer = await RawPeer.open();
    try {
      await peer.send({ op: 'RRQ', filename: 'small.bin', mode: 'octet', options: [] }, p);
      const data = await peer.next();
      expect(data?.packet.op).toBe('DATA');
      await s.stop();
      expect(s.activeTransfers).toBe(0);
      expect((await peer.next())?.packet).toEqual({ op: 'ERROR', code: 0, message: 'server shutting down' });
      // Both ports are free again: binding them succeeds.
      const again = new TftpServer({ host: '127.0.0.1', port: p, source: dirSource(dir) });
      await again.start();
      await again.stop();
      const other = new TftpServer({ host: '127.0.0.1', port: data!.from.port, source: dirSource(dir) });
      await other.start();
      await other.stop();
    } finally {
      peer.close();
    }
  });
});
