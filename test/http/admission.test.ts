import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, symlink } from 'node:fs/promises';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BOOT_ASSETS_DIR } from '../../server/initramfs/build.ts';
import { addImage, sha256, type FakeImage } from './fixtures.ts';
import { baseYaml, harness, type Harness } from './setup.ts';

const run = promisify(execFile);

/**
 * Admission control of root streams against the real server on loopback: budget 1, real
 * curl clients, and /init's own download_rootfs run by busybox sh. The stream holding the
 * budget is a raw TCP client that stops reading, so "the first download is still running"
 * lasts exactly until the test lets it finish; nothing depends on timing.
 */
const ID = 'ad0ad0ad0ad0ad0a';
const BIG = 48 << 20; // far more than loopback socket buffers hold: a paused reader really blocks the stream
const mac = (n: number) => `52-54-00-ad-00-0${n}`;

let h: Harness;
let base: string;
let image: FakeImage;
let big: Buffer;

beforeAll(async () => {
  h = await harness(baseYaml({ server: '  admission:\n    maxRootStreams: 1\n    maxBootFileStreams: 1\n    maxRetryAfterSeconds: 1\n' }));
  image = addImage(h.store, 'demo');
  big = Buffer.alloc(BIG, 0x5a);
  big.write('hsqs', 0, 'latin1');
  mkdirSync(join(h.store.root, ID), { recursive: true });
  writeFileSync(h.store.artifactPath(ID, 'rootfs.squashfs')!, big);
  writeFileSync(h.store.artifactPath(ID, 'vmlinuz')!, big);
  writeFileSync(h.store.artifactPath(ID, 'initrd.img')!, big);
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(h.app.server.address() as AddressInfo).port}`;
});
afterAll(async () => h?.close());

const rootfsUrl = (n: number) => `${base}/images/${ID}/rootfs.squashfs?mac=${mac(n)}`;
const kernelUrl = (n: number) => `${base}/images/${ID}/vmlinuz?mac=${mac(n)}`;
const initrdUrl = (n: number) => `${base}/images/${ID}/initrd.img?mac=${mac(n)}`;

/** curl -i: status line, lower-cased headers, body. */
async function curlHead(url: string, extra: string[] = []): Promise<{ status: string; headers: Record<string, string>; body: string }> {
  const { stdout } = await run('curl', ['-sS', '-i', '--max-time', '30', ...extra, url], { encoding: 'latin1', maxBuffer: 1 << 20 });
  const [head, ...rest] = stdout.split('\r\n\r\n');
  const [status, ...lines] = head!.split('\r\n');
  const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  return { status: status!, headers, body: rest.join('\r\n\r\n') };
}

async function curlDownload(url: string, out: string, extra: string[] = []): Promise<string> {
  return (await run('curl', ['-sS', '--max-time', '60', '-o', out, '-w', '%{http_code}', ...extra, url])).stdout;
}

/** A download that is admitted, receives its headers, then stops reading until `finish()`. */
async function heldStream(url: string): Promise<{ status: string; abandon(): void; finish(): Promise<number> }> {
  const { pathname, search, port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write(`GET ${pathname}${search} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n`);
  let received = 0;
  let head = '';
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (!head) {
        head = chunk.toString('latin1');
        socket.pause();
        resolve();
      }
    });
  });
  return {
    status: head.split('\r\n')[0]!,
    /** Stops without reading the rest. */
    abandon() {
      socket.destroy();
    },
    async finish() {
      socket.resume();
      // Connection: close: the server closes after the body, i.e. after the stream has released its slot.
      await closed;
      return received;
    },
  };
}

const phases = (n: number) => h.timeline.current(mac(n).replace(/-/g, ':'))?.phases ?? [];

describe('root-stream admission over HTTP (budget 1)', () => {
  it('a second client is held, then 503 + Retry-After, keeps its place ahead of a third, and is served when the first finishes', async () => {
    const first = await heldStream(rootfsUrl(1));
    expect(first.status).toBe('HTTP/1.1 200 OK');

    const second = await curlHead(rootfsUrl(2));
    expect(second.status).toBe('HTTP/1.1 503 Service Unavailable (queued 1 of 1, retry after 1 s)');
    expect(second.headers['retry-after']).toBe('1');
    expect(second.headers['cache-control']).toBe('no-store');
    expect(second.headers.etag).toBeUndefined();
    expect(second.body).toBe('all 1 root streams are busy: you are number 1 of 1 in the queue; retry after 1 s (your place is kept)\n');

    expect((await curlHead(rootfsUrl(3))).status).toMatch(/ 503 .*\(queued 2 of 2,/);
    // Coming back, each keeps its place; asking more often does not move the third ahead.
    expect((await curlHead(rootfsUrl(3))).status).toMatch(/\(queued 2 of 2,/);
    expect((await curlHead(rootfsUrl(2))).status).toMatch(/\(queued 1 of 2,/);

    // Not root streams: HEAD, a small range, a kernel (a budget of its own; this one is under 1 MiB, not a stream at all).
    expect((await curlHead(rootfsUrl(3), ['-I'])).status).toBe('HTTP/1.1 200 OK');
    expect((await curlHead(rootfsUrl(3), ['-r', '0-65535'])).status).toBe('HTTP/1.1 206 Partial Content');
    expect((await curlHead(`${base}/images/${image.id}/vmlinuz`)).status).toBe('HTTP/1.1 200 OK');

    // The second is back and waits on the server (its request held open) when the first finishes:
    // the freed slot is its (curl honours the Retry-After of a hold that runs out first).
    const out2 = join(h.dir, 'second.bin');
    const secondDownload = curlDownload(rootfsUrl(2), out2, ['--retry', '10']);
    expect(await first.finish()).toBeGreaterThan(BIG);
    expect(await secondDownload).toBe('200');
    expect(sha256(readFileSync(out2))).toBe(sha256(big));
    // curl honours Retry-After on a 503 (if the second's slot is not yet back when it asks).
    const out3 = join(h.dir, 'third.bin');
    expect(await curlDownload(rootfsUrl(3), out3, ['--retry', '10'])).toBe('200');
    expect(sha256(readFileSync(out3))).toBe(sha256(big));

    const second2 = phases(2).filter((p) => p.phase === 'queued' || p.phase === 'rootfs');
    expect(second2.map((p) => p.phase)).toEqual(['queued', 'queued', 'rootfs']);
    expect(second2[0]!.detail).toBe('all root streams busy: number 1 of 1 in the queue');
    expect(second2[1]!.detail).toMatch(/^waited \d+\.\d s for a root stream \(\d+ retries\)$/);
    expect(second2[1]!.durationMs).toBeGreaterThan(0);
    expect(second2[2]!.bytes).toBe(BIG);
    const third = phases(3).filter((p) => p.phase === 'queued');
    expect(third.map((p) => p.detail)).toEqual([expect.stringMatching(/number 2 of 2/), expect.stringMatching(/^waited /)]);
    // Served strictly after the second finished.
    expect(Date.parse(third[1]!.at)).toBeGreaterThanOrEqual(Date.parse(second2[2]!.at));
  });
});

describe("/init's download_rootfs under busybox sh against the real server", () => {
  let bin: string;
  beforeAll(async () => {
    bin = join(h.dir, 'bin');
    await mkdir(bin);
    const { stdout } = await run('/bin/busybox', ['--list']);
    for (const applet of stdout.split('\n').filter(Boolean)) await symlink('/bin/busybox', join(bin, applet));
  });

  it('waits as told while queued (keeping its place ahead of a later machine), then downloads the whole file', async () => {
    const first = await heldStream(rootfsUrl(4));
    expect(first.status).toBe('HTTP/1.1 200 OK');

    const init = await readFile(join(BOOT_ASSETS_DIR, 'init'), 'utf8');
    const fn = /^download_rootfs\(\) \{\n[\s\S]*?\n\}\n/m.exec(init)?.[0];
    expect(fn).toBeDefined();
    const common = join(BOOT_ASSETS_DIR, 'initramfs/lib/netboot/common.sh');
    const file = join(h.dir, 'init-rootfs.bin');
    const script = `. ${common}; NETBOOT_RUN=${h.dir}/run; mkdir -p $NETBOOT_RUN; ${fn}\ndownload_rootfs '${rootfsUrl(5)}' ${file} ${BIG} && echo DOWNLOADED`;
    const machine = run('/bin/busybox', ['sh', '-c', script], { env: { PATH: bin }, timeout: 120_000 });

    // It is queued (its first 503), and a machine asking later gets the place behind it.
    await expect.poll(() => phases(5).some((p) => p.phase === 'queued'), { timeout: 30_000 }).toBe(true);
    expect((await curlHead(rootfsUrl(6))).status).toMatch(/ 503 .*\(queued 2 of 2,/);

    await first.finish();
    const { stdout } = await machine;
    expect(stdout).toMatch(/DOWNLOADED\n$/);
    expect(stdout).toMatch(/netboot: rootfs: server busy \(Service Unavailable \(queued 1 of [12], retry after 1 s\)\), waiting 1\.\d s\n/);
    expect(sha256(readFileSync(file))).toBe(sha256(big));
    const queued = phases(5).filter((p) => p.phase === 'queued');
    expect(queued).toHaveLength(2);
    expect(queued[1]!.durationMs).toBeGreaterThan(0);
    expect(phases(5).find((p) => p.phase === 'rootfs')?.bytes).toBe(BIG);

    const out6 = join(h.dir, 'sixth.bin');
    expect(await curlDownload(rootfsUrl(6), out6, ['--retry', '10'])).toBe('200');
    const sixth = phases(6).filter((p) => p.phase === 'queued');
    expect(Date.parse(sixth[1]!.at)).toBeGreaterThanOrEqual(Date.parse(queued[1]!.at));
  }, 150_000);
});

describe('a slot holder that stops reading', () => {
  let h2: Harness;
  let base2: string;
  beforeAll(async () => {
    h2 = await harness(baseYaml({ server: '  admission:\n    maxRootStreams: 1\n    maxRetryAfterSeconds: 1\n    preemptAfterSeconds: 1\n' }));
    mkdirSync(join(h2.store.root, ID), { recursive: true });
    writeFileSync(h2.store.artifactPath(ID, 'rootfs.squashfs')!, big);
    await h2.app.listen({ host: '127.0.0.1', port: 0 });
    base2 = `http://127.0.0.1:${(h2.app.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => h2?.close());

  it('is cut once machines wait (preemptAfterSeconds), and the waiter gets the slot', async () => {
    const url = (n: number) => `${base2}/images/${ID}/rootfs.squashfs?mac=${mac(n)}`;
    const rootfsOf = (n: number) => h2.timeline.current(mac(n).replace(/-/g, ':'))?.phases.find((p) => p.phase === 'rootfs');
    const stalled = await heldStream(url(7));
    expect(stalled.status).toBe('HTTP/1.1 200 OK');
    const out = join(h2.dir, 'waiter.bin');
    const waiter = curlDownload(url(8), out, ['--retry', '10']);
    // The stalled stream ends, short, while its client still reads nothing.
    await expect.poll(() => rootfsOf(7)?.detail, { timeout: 30_000 }).toMatch(/^aborted after \d+ of \d+ bytes$/);
    expect(rootfsOf(7)!.bytes).toBeLessThan(BIG);
    stalled.abandon();
    expect(await waiter).toBe('200');
    expect(sha256(readFileSync(out))).toBe(sha256(big));
  });
});

describe('kernel and initrd admission over HTTP (budget 1, a queue of their own)', () => {
  it('a second kernel download waits for the first, and neither waits for root streams nor holds them up', async () => {
    const first = await heldStream(kernelUrl(7));
    expect(first.status).toBe('HTTP/1.1 200 OK');
    // The root budget is the root images' own: a root stream starts while the kernel slot is taken.
    const root = await heldStream(rootfsUrl(8));
    expect(root.status).toBe('HTTP/1.1 200 OK');

    const second = await curlHead(kernelUrl(9));
    expect(second.status).toBe('HTTP/1.1 503 Service Unavailable (queued 1 of 1, retry after 1 s)');
    expect(second.headers['retry-after']).toBe('1');
    expect(second.body).toBe('all 1 kernel and initrd streams are busy: you are number 1 of 1 in the queue; retry after 1 s (your place is kept)\n');
    expect(await h.metrics.registry.metrics()).toMatch(/^netboot_boot_file_stream_503_total\{reason="wait"\} 1$/m);
    root.abandon();

    const out = join(h.dir, 'kernel9.bin');
    const download = curlDownload(kernelUrl(9), out, ['--retry', '10']);
    expect(await first.finish()).toBeGreaterThan(BIG);
    expect(await download).toBe('200');
    expect(sha256(readFileSync(out))).toBe(sha256(big));
    const queued = phases(9).filter((p) => p.phase === 'queued');
    expect(queued[0]!.detail).toBe('all kernel and initrd streams busy: number 1 of 1 in the queue');
    expect(queued.at(-1)!.detail).toMatch(/^waited \d+\.\d s for a kernel or initrd stream \(\d+ retries\)$/);
    const metrics = await h.metrics.registry.metrics();
    expect(metrics).toMatch(/^netboot_boot_file_stream_queue_wait_seconds_count 1$/m);
    expect(metrics).toMatch(/^netboot_boot_file_streams_queued 0$/m);
  });
  it('a machine that got its kernel queues for its initrd ahead of machines that asked for a kernel after it', async () => {
    const kernel1 = await heldStream(kernelUrl(1));
    expect(await kernel1.finish()).toBeGreaterThan(BIG);
    const kernel2 = await heldStream(kernelUrl(2));
    expect(kernel2.status).toBe('HTTP/1.1 200 OK');
    expect((await curlHead(kernelUrl(3))).status).toMatch(/ 503 .*\(queued 1 of 1,/);
    // Machine 1 came before machine 3: its initrd goes ahead of machine 3's kernel.
    expect((await curlHead(initrdUrl(1))).status).toMatch(/ 503 .*\(queued 1 of 2,/);
    expect((await curlHead(kernelUrl(3))).status).toMatch(/ 503 .*\(queued 2 of 2,/);

    expect(await kernel2.finish()).toBeGreaterThan(BIG);
    const [initrd1, kernel3] = await Promise.all([
      curlDownload(initrdUrl(1), join(h.dir, 'initrd1.bin'), ['--retry', '10']),
      curlDownload(kernelUrl(3), join(h.dir, 'kernel3.bin'), ['--retry', '10']),
    ]);
    expect([initrd1, kernel3]).toEqual(['200', '200']);
    expect(await h.metrics.registry.metrics()).toMatch(/^netboot_boot_file_streams_queued 0$/m);
  });
});
