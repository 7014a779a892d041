import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { servedFiles } from '../../server/fs/open-file-cache.ts';
import { nativeSendfileCounters, nativeSendfileStatus } from '../../server/http/native-sendfile.ts';
import { sendFilePaths } from '../../server/http/send-file.ts';
import { addImage, sha256, type FakeImage } from './fixtures.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from './setup.ts';

// Artifact downloads over real TCP, once through the sendfile addon and once through the copy loop.

const run = promisify(execFile);
/** Async: the server under test runs in this process, so a blocking child would starve it. */
async function curl(args: string[]): Promise<string> {
  return (await run('curl', ['-sS', '--max-time', '30', ...args], { encoding: 'latin1' })).stdout;
}

const native = nativeSendfileStatus().available;
const openFds = () => readdirSync('/proc/self/fd').length;

let h: Harness;
let image: FakeImage;
let base: string;
let rootfs: Buffer;
const big = randomBytes(32 << 20);

beforeAll(async () => {
  // No root-stream budget: this file tests concurrent bodies (admission control: test/http/admission.test.ts).
  h = await harness(baseYaml({ server: '  admission:\n    maxRootStreams: 0\n' }));
  image = addImage(h.store, 'demo', { rootfsPadding: 8 << 20 });
  rootfs = image.files['rootfs.squashfs']!;
  mkdirSync(join(h.store.root, 'b16b16b16b16b16b'), { recursive: true });
  writeFileSync(h.store.artifactPath('b16b16b16b16b16b', 'rootfs.squashfs')!, big);
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(h.app.server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  delete process.env.NETBOOT_SENDFILE;
  await h?.close();
});

async function bytesServed(): Promise<number> {
  const match = /netboot_http_bytes_total\{artifact="rootfs.squashfs"\} (\d+)/.exec(await h.metrics.text());
  return match ? Number(match[1]) : 0;
}

describe.each([
  { path: 'native' as const, skip: !native },
  { path: 'copy' as const, skip: false },
])('downloads through the $path path', ({ path, skip }) => {
  let before: typeof sendFilePaths;
  let bothPaths = false;
  beforeAll(() => {
    if (path === 'copy') process.env.NETBOOT_SENDFILE = 'copy';
    else delete process.env.NETBOOT_SENDFILE;
  });
  afterAll(() => {
    delete process.env.NETBOOT_SENDFILE;
  });
  beforeEach(() => {
    before = { ...sendFilePaths };
    bothPaths = false;
  });
  afterEach(() => {
    // Every body in this block went out by the path under test, and at least one did.
    expect(sendFilePaths[path]).toBeGreaterThan(before[path]);
    if (!bothPaths) expect(sendFilePaths[path === 'native' ? 'copy' : 'native']).toBe(before[path === 'native' ? 'copy' : 'native']);
  });

  it.skipIf(skip)('a whole file is byte-identical, counted in the metrics and the timeline', async () => {
    const served = await bytesServed();
    const out = join(h.dir, `whole-${path}`);
    expect(await curl(['-o', out, '-w', '%{http_code}', `${base}/images/${image.id}/rootfs.squashfs?mac=${MAC_HYP}`])).toBe('200');
    expect(sha256(readFileSync(out))).toBe(sha256(rootfs));
    expect(await bytesServed()).toBe(served + rootfs.length);
    const phase = h.timeline.current(MAC)!.phases.filter((p) => p.phase === 'rootfs').at(-1)!;
    expect(phase.bytes).toBe(rootfs.length);
    expect(phase.detail).toBeUndefined();
  });

  it.skipIf(skip)('a range in the middle: 206 and exactly those bytes', async () => {
    const out = join(h.dir, `middle-${path}`);
    expect(await curl(['-r', '1000001-5000000', '-o', out, '-w', '%{http_code}', `${base}/images/${image.id}/rootfs.squashfs`])).toBe('206');
    expect(readFileSync(out).equals(rootfs.subarray(1_000_001, 5_000_001))).toBe(true);
  });

  it.skipIf(skip)('a cut download resumed with -C - ends byte-identical', async () => {
    const out = join(h.dir, `resumed-${path}`);
    writeFileSync(out, rootfs.subarray(0, 3_333_333));
    await curl(['-C', '-', '-o', out, `${base}/images/${image.id}/rootfs.squashfs`]);
    expect(sha256(readFileSync(out))).toBe(sha256(rootfs));
  });

  it.skipIf(skip)('keep-alive: a second request on the same connection after a body', async () => {
    const [a, b] = [join(h.dir, `ka1-${path}`), join(h.dir, `ka2-${path}`)];
    const url = `${base}/images/${image.id}/rootfs.squashfs`;
    // num_connects per transfer: 1 for the first, 0 when the second reused the connection.
    const connects = await curl(['-o', a, '-o', b, '-w', '%{num_connects} ', url, `${base}/images/${image.id}/vmlinuz`]);
    expect(connects).toBe('1 0 ');
    expect(sha256(readFileSync(a))).toBe(sha256(rootfs));
    expect(sha256(readFileSync(b))).toBe(sha256(image.files.vmlinuz!));
  });

  it.skipIf(skip)('pipelined requests: the second body waits for the first, both exact', async () => {
    // The second response has no socket of its own until the first ends: it is copied into Node's queue.
    bothPaths = true;
    const client = connect((h.app.server.address() as AddressInfo).port, '127.0.0.1');
    await new Promise<void>((done) => client.once('connect', done));
    const chunks: Buffer[] = [];
    client.on('data', (chunk: Buffer) => chunks.push(chunk));
    const closed = new Promise((done) => client.once('close', done));
    client.write(
      `GET /images/${image.id}/rootfs.squashfs HTTP/1.1\r\nHost: test\r\n\r\n` +
        `GET /images/${image.id}/vmlinuz HTTP/1.1\r\nHost: test\r\nRange: bytes=10-20009\r\nConnection: close\r\n\r\n`,
    );
    await closed;
    let stream = Buffer.concat(chunks);
    const bodies: Buffer[] = [];
    for (let i = 0; i < 2; i++) {
      const headEnd = stream.indexOf('\r\n\r\n');
      const head = stream.subarray(0, headEnd).toString('latin1');
      const length = Number(/content-length: (\d+)/i.exec(head)![1]);
      bodies.push(stream.subarray(headEnd + 4, headEnd + 4 + length));
      stream = stream.subarray(headEnd + 4 + length);
    }
    expect(stream.length).toBe(0);
    expect(sha256(bodies[0]!)).toBe(sha256(rootfs));
    expect(bodies[1]!.equals(image.files.vmlinuz!.subarray(10, 20010))).toBe(true);
    expect(sendFilePaths.copy).toBe(before.copy + (path === 'native' ? 1 : 2));
    expect(sendFilePaths.native).toBe(before.native + (path === 'native' ? 1 : 0));
  });

  it.skipIf(skip)('30 concurrent downloads are all byte-identical', async () => {
    const outs = Array.from({ length: 30 }, (_, i) => join(h.dir, `many-${path}-${i}`));
    const codes = await Promise.all(outs.map((out) => curl(['-o', out, '-w', '%{http_code}', `${base}/images/${image.id}/rootfs.squashfs`])));
    expect(codes.every((code) => code === '200')).toBe(true);
    const digest = sha256(rootfs);
    for (const out of outs) expect(sha256(readFileSync(out)), out).toBe(digest);
  });

  it.skipIf(skip)('a client that disconnects mid-transfer: recorded as aborted, no fd left open, the server goes on', async () => {
    // Served files keep one shared fd open while idle (OpenFileCache): closed here so that a leak shows.
    servedFiles.closeIdle();
    const fdsBefore = openFds();
    const served = await bytesServed();
    const client = connect((h.app.server.address() as AddressInfo).port, '127.0.0.1');
    await new Promise<void>((done) => client.once('connect', done));
    client.write(`GET /images/b16b16b16b16b16b/rootfs.squashfs?mac=${MAC_HYP} HTTP/1.1\r\nHost: test\r\n\r\n`);
    let got = 0;
    client.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got > 1 << 20) client.pause(); // then stop reading: the server blocks on a full socket
    });
    // Wait until the server is stuck: a full socket buffer, nothing more moving.
    let last = -1;
    await expect.poll(() => {
      const sent = path === 'native' ? nativeSendfileCounters()!.bytesSent : got;
      const still = got > 1 << 20 && sent === last;
      last = sent;
      return still;
    }, { interval: 200, timeout: 10_000 }).toBe(true);
    if (path === 'native') expect(nativeSendfileCounters()!.activeJobs).toBe(1);
    client.destroy();

    await expect.poll(() => h.timeline.current(MAC)?.phases.at(-1)?.detail ?? '', { timeout: 10_000 }).toMatch(new RegExp(`^aborted after \\d+ of ${big.length} bytes$`));
    const aborted = h.timeline.current(MAC)!.phases.at(-1)!;
    expect(aborted.bytes).toBeGreaterThan(1 << 20);
    expect(aborted.bytes).toBeLessThan(big.length);
    expect(await bytesServed()).toBe(served + aborted.bytes!);
    if (path === 'native') expect(nativeSendfileCounters()!.activeJobs).toBe(0);
    await expect.poll(() => {
      servedFiles.closeIdle(); // closes only fds nobody holds
      return openFds();
    }, { timeout: 10_000 }).toBe(fdsBefore);

    expect(await curl(['-o', '/dev/null', '-w', '%{http_code} %{size_download}', `${base}/images/${image.id}/rootfs.squashfs`])).toBe(`200 ${rootfs.length}`);
  });
});

describe('bodies through inject (no real socket)', () => {
  it('take the copy path and are complete', async () => {
    const before = { ...sendFilePaths };
    const res = await h.app.inject(`/images/${image.id}/vmlinuz`);
    expect(res.rawPayload.equals(image.files.vmlinuz!)).toBe(true);
    expect(sendFilePaths.copy).toBe(before.copy + 1);
    expect(sendFilePaths.native).toBe(before.native);
  });
});
