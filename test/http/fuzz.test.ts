import { request as httpRequest } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addImage, sha256, type FakeImage } from './fixtures.ts';
import { describeRequest, generateRequests, runFuzz, sendRaw, type FuzzReport } from './fuzz-requests.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from './setup.ts';

/** GET over real TCP; the whole body. */
function get(base: string, path: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

function connections(app: FastifyInstance): Promise<number> {
  return new Promise((resolve, reject) => app.server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
}

const SECOND_MAC = '52:54:00:aa:bb:01';

describe('HTTP fuzz: a few thousand hostile requests over real TCP', () => {
  let h: Harness;
  let base: string;
  let image: FakeImage;
  let report: FuzzReport;

  beforeAll(async () => {
    h = await harness(baseYaml({ machines: `  ${SECOND_MAC}:\n    hostname: demo2\n`, server: '  api:\n    readToken: fuzz-read-token-0001\n' }));
    image = addImage(h.store, 'demo');
    await h.app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(h.app.server.address() as AddressInfo).port}`;

    // Real grants to mutate: the scripts hand out signed layer URLs and event tokens.
    const layerPaths: string[] = [];
    const eventTokens: Record<string, string> = {};
    for (const mac of [MAC, SECOND_MAC]) {
      const script = (await get(base, `/machines/${mac.replace(/:/g, '-')}/boot.ipxe`)).body.toString();
      layerPaths.push(new URL(/netboot\.layer=(\S+)/.exec(script)![1]!).pathname + '?' + new URL(/netboot\.layer=(\S+)/.exec(script)![1]!).search.slice(1));
      eventTokens[mac] = /netboot\.token=(\S+)/.exec(script)![1]!;
    }
    report = await runFuzz(base, {
      seed: 0x14f022,
      count: 3000,
      concurrency: 16,
      targets: { macs: [MAC, SECOND_MAC], imageIds: [image.id], imageNames: ['demo'], layerPaths, eventTokens, apiTokens: ['fuzz-read-token-0001'] },
    });
  }, 240_000);

  afterAll(async () => h?.close());

  it('the generator is deterministic and varied', () => {
    const a = generateRequests(7, 500);
    const b = generateRequests(7, 500);
    expect(a.map(describeRequest)).toEqual(b.map(describeRequest));
    expect(generateRequests(8, 500).map(describeRequest)).not.toEqual(a.map(describeRequest));
    expect(new Set(a.map((r) => r.method)).size).toBeGreaterThanOrEqual(10);
    expect(new Set(a.map((r) => r.target)).size).toBeGreaterThan(250);
  });

  it('no request gets a 5xx, and every request gets an answer', () => {
    const show = (list: FuzzReport['serverErrors']) => list.slice(0, 10).map((r) => `${r.outcome} <- ${describeRequest(r.request)}\n   ${r.excerpt.split('\r\n')[0]} ${r.excerpt.split('\r\n\r\n')[1]?.slice(0, 200) ?? ''}`);
    expect(show(report.serverErrors), JSON.stringify(report.histogram)).toEqual([]);
    // Every request gets a status line, CONNECT included (405 from the server's 'connect' listener).
    expect(show(report.unanswered), JSON.stringify(report.histogram)).toEqual([]);
    expect(report.total).toBe(3000);
    // The run reached the routes, not just the 404 handler and the HTTP parser.
    for (const status of [200, 206, 304, 400, 401, 403, 404, 405, 410, 416]) expect(report.histogram[String(status)] ?? 0, `status ${status}: ${JSON.stringify(report.histogram)}`).toBeGreaterThan(0);
  });

  it('a repeated query parameter is an array, not a crash (found by this run: ?mac=a&mac=b answered 500)', async () => {
    const res = await get(base, `/images/${image.id}/manifest.json?mac=${MAC_HYP}&mac=${MAC_HYP}`);
    expect(res.status).toBe(200);
    expect(res.body.equals(image.files['manifest.json']!)).toBe(true);
  });

  it('a CONNECT whose body is still coming is answered 405 and its connection ends with the client\'s FIN (it held the server\'s close open forever: found by the fuzz in ipxe-qemu.test.ts)', async () => {
    const serverSide = new Promise<Socket>((resolve) => h.app.server.once('connect', (_request, socket: Socket) => resolve(socket)));
    const body = Buffer.alloc(1_100_000, 0x61);
    const answer = await sendRaw('127.0.0.1', (h.app.server.address() as AddressInfo).port, { method: 'CONNECT', target: `/api/machines/${MAC_HYP}/events`, headers: [['Host', '127.0.0.1']], body }, 15_000);
    expect(answer.outcome).toBe(405);
    const socket = await serverSide;
    if (!socket.destroyed) await new Promise((resolve) => socket.once('close', resolve));
    // Closed because the client's FIN arrived (the body was read and dropped), not by the linger timer.
    expect(socket.readableEnded).toBe(true);
  });

  it('afterwards the server still answers, serves an artifact byte-identical, and holds no connections', async () => {
    expect((await get(base, '/healthz')).status).toBe(200);
    const kernel = await get(base, `/images/${image.id}/vmlinuz?mac=${MAC_HYP}`);
    expect(kernel.status).toBe(200);
    expect(sha256(kernel.body)).toBe(sha256(image.files.vmlinuz!));
    const rootfs = await get(base, `/images/${image.id}/rootfs.squashfs`);
    expect(rootfs.body.equals(image.files['rootfs.squashfs']!)).toBe(true);
    // A fresh boot's layer still works (the fuzz run used up none of this boot's deliveries).
    const script = (await get(base, `/machines/${MAC_HYP}/boot.ipxe`)).body.toString();
    const layerUrl = new URL(/netboot\.layer=(\S+)/.exec(script)![1]!);
    const layer = await get(base, layerUrl.pathname + layerUrl.search);
    expect(layer.status).toBe(200);
    expect(layer.body.length % 512).toBe(0);
    // Every fuzz connection was closed (each asked for it): the server holds none once ours are gone.
    await expect.poll(() => connections(h.app), { timeout: 5000, interval: 50 }).toBe(0);
  });
});
