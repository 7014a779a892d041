import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { addImage, sha256, tempDir, type FakeImage } from './fixtures.ts';
import { capturedLog } from '../lab/captured-log.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from './setup.ts';

/**
 * Staged faults of the state dir under a running HTTP server (real TCP): removed, read-only, full.
 * Each must fail at most the request that needed the state dir, be logged, and leave the server
 * serving everyone else. Mounts need root (the tests run as root); every mount is removed in
 * afterEach/afterAll, also when a test fails.
 */

const MAC2 = '52:54:00:aa:bb:02';
const MAC2_HYP = '52-54-00-aa-bb-02';
const LEDGER = 'used-layer-urls.jsonl';
const asRoot = process.getuid?.() === 0;

interface Response {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

function collect(res: IncomingMessage): Promise<Response> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    res.on('error', reject);
  });
}

/** One request on its own connection; resolves once the response headers are in (the body not yet read). */
function send(base: string, path: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { agent: false, method: options.method ?? 'GET', headers: options.headers }, resolve);
    req.on('error', reject);
    req.end(options.body);
  });
}

const fetchAll = async (base: string, path: string, options?: Parameters<typeof send>[2]) => collect(await send(base, path, options));

const mounts: string[] = [];
function mount(...args: string[]): void {
  execFileSync('mount', args);
  mounts.push(args[args.length - 1]!);
}
function unmountAll(): void {
  while (mounts.length > 0) {
    const target = mounts.pop()!;
    // lazy: a handle still open in the server must not leave the mount behind
    try {
      execFileSync('umount', ['--lazy', target]);
    } catch {
      /* already gone */
    }
  }
}

/** The boot script's signed layer path and event token for a MAC (each fetch after a delivery is a new boot). */
async function grants(base: string, macHyp: string): Promise<{ layer: string; token: string }> {
  const script = (await fetchAll(base, `/machines/${macHyp}/boot.ipxe`)).body.toString();
  const url = new URL(/netboot\.layer=(\S+)/.exec(script)![1]!);
  return { layer: url.pathname + url.search, token: /netboot\.token=(\S+)/.exec(script)![1]! };
}

const ledgerLines = (stateDir: string) => (existsSync(join(stateDir, LEDGER)) ? readFileSync(join(stateDir, LEDGER), 'utf8').split('\n').filter(Boolean).length : 0);

interface Server {
  h: Harness;
  base: string;
  image: FakeImage;
  log: Record<string, unknown>[];
  stateDir: string;
}

async function start(stateDir: string | undefined, folders: Record<string, Record<string, string | Buffer>> = {}): Promise<Server> {
  const { lines, logger } = capturedLog();
  const h = await harness(baseYaml({ machines: `  ${MAC2}:\n    hostname: demo2\n` }), folders, { log: logger, ...(stateDir ? { stateDir } : {}) });
  const image = addImage(h.store, 'demo');
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  return { h, base: `http://127.0.0.1:${(h.app.server.address() as AddressInfo).port}`, image, log: lines, stateDir: h.deps.stateDir };
}

/** What never needs the state dir keeps working: health, scripts, artifacts (byte-identical), public layers, boot events. */
async function expectPublicRoutesServe(s: Server): Promise<void> {
  expect((await fetchAll(s.base, '/healthz')).status).toBe(200);
  expect((await fetchAll(s.base, '/boot.ipxe')).status).toBe(200);
  const kernel = await fetchAll(s.base, `/images/${s.image.id}/vmlinuz?mac=${MAC2_HYP}`);
  expect(kernel.status).toBe(200);
  expect(sha256(kernel.body)).toBe(sha256(s.image.files.vmlinuz!));
  const publicLayer = await fetchAll(s.base, `/machines/${MAC2_HYP}/layer`);
  expect(publicLayer.status).toBe(200);
  const { token } = await grants(s.base, MAC2_HYP);
  const event = await fetchAll(s.base, `/api/machines/${MAC2_HYP}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ phase: 'init', t: 1.5 }),
  });
  expect(event.status).toBe(202);
}

const ledgerErrors = (log: Record<string, unknown>[]) => log.filter((l) => l.level === 50 && String(l.msg).includes('used-URL ledger could not be written'));

let server: Server | undefined;
const temps: { cleanup: () => void }[] = [];
afterEach(async () => {
  unmountAll();
  await server?.h.close();
  server = undefined;
  for (const t of temps.splice(0)) t.cleanup();
});
afterAll(unmountAll);

describe('state dir faults under a running HTTP server', () => {
  it('state dir removed while a signed layer is on the wire: counted before its first byte, the delivery completes, the next ledger error is logged, the server serves on', async () => {
    // A layer far bigger than the socket buffers (tcp_wmem + tcp_rmem maxima): it is still on the wire when the state dir goes.
    const big = Buffer.alloc(15 << 20, 0x5a);
    server = await start(undefined, { demo1: { 'srv/a': big, 'srv/b': big, 'srv/c': big, 'srv/d': big } });
    const s = server;
    const { layer, token } = await grants(s.base, MAC_HYP);
    const before = ledgerLines(s.stateDir);
    const response = await send(s.base, layer);
    response.pause();
    expect(response.statusCode).toBe(200);
    // The delivery is on disk before its first byte went out (a crash now could not forget it): now the state dir goes.
    expect(ledgerLines(s.stateDir)).toBe(before + 1);
    rmSync(s.stateDir, { recursive: true, force: true });
    const delivered = await collect(response.resume() as IncomingMessage);
    expect(delivered.body.length).toBe(Number(response.headers['content-length']));
    expect(delivered.body.length).toBeGreaterThan(60 << 20);
    expect(ledgerErrors(s.log)).toEqual([]);
    // /init reports its layer: the retirement cannot be written (logged before the answer), the event is accepted.
    const reported = await fetchAll(s.base, `/api/machines/${MAC_HYP}/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ phase: 'layer', t: 2 }),
    });
    expect(reported.status).toBe(202);
    await expect.poll(() => ledgerErrors(s.log).length).toBe(1);
    expect(ledgerErrors(s.log)[0]).toMatchObject({ mac: MAC, phase: 'layer', err: expect.stringContaining('ENOENT') });

    await expectPublicRoutesServe(s);
    // The retirement still holds (in memory): that boot id gets no more deliveries.
    expect((await fetchAll(s.base, layer)).status).toBe(410);
    // A machine whose host keys are made now gets them in a re-created state dir, and the ledger works again.
    const second = await grants(s.base, MAC2_HYP);
    expect((await fetchAll(s.base, second.layer)).status).toBe(200);
    expect(ledgerLines(s.stateDir)).toBe(1);
    expect(ledgerErrors(s.log)).toHaveLength(1);
  });

  it.skipIf(!asRoot)('state dir read-only (a read-only bind mount): signed layers of machines with keys are delivered, new keys fail only that request', async () => {
    const state = tempDir('netboot-faults-ro-');
    temps.push(state);
    server = await start(state.path);
    const s = server;
    // demo1 booted before: it has host keys.
    expect((await fetchAll(s.base, (await grants(s.base, MAC_HYP)).layer)).status).toBe(200);
    expect(ledgerLines(s.stateDir)).toBe(1);

    mount('--bind', s.stateDir, s.stateDir);
    execFileSync('mount', ['-o', 'remount,bind,ro', s.stateDir]);
    expect(() => writeFileSync(join(s.stateDir, 'probe'), 'x')).toThrow(/EROFS/);

    const next = await fetchAll(s.base, (await grants(s.base, MAC_HYP)).layer);
    expect(next.status).toBe(200);
    expect(next.body.length % 512).toBe(0);
    await expect.poll(() => ledgerErrors(s.log).length).toBe(1);
    expect(ledgerErrors(s.log)[0]).toMatchObject({ mac: MAC, err: expect.stringContaining('EROFS') });

    // demo2 never booted: its host keys cannot be stored, so its signed layer fails (logged), and only that request.
    const refused = await fetchAll(s.base, (await grants(s.base, MAC2_HYP)).layer);
    expect(refused.status).toBe(500);
    expect(JSON.parse(refused.body.toString())).toEqual({ error: 'internal error building the layer (see the server log)' });
    expect(s.log.find((l) => l.level === 50 && l.mac === MAC2 && l.phase === 'layer')).toMatchObject({ status: 500, error: expect.stringContaining(`machines/${MAC2_HYP}`) });

    await expectPublicRoutesServe(s);
    expect(ledgerLines(s.stateDir)).toBe(1);
  });

  it.skipIf(!asRoot)('disk full (the state dir on a 64 KiB tmpfs): layer deliveries and events go on, the failing writes fail only their request', async () => {
    const parent = tempDir('netboot-faults-full-');
    temps.push(parent);
    const stateDir = join(parent.path, 'state');
    mkdirSync(stateDir);
    mount('-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'netboot-faults-test', stateDir);
    server = await start(stateDir);
    const s = server;
    expect((await fetchAll(s.base, (await grants(s.base, MAC_HYP)).layer)).status).toBe(200);

    // Fill the disk; then drop the ledger (its page goes to the filler too), so the next append needs a new page.
    const fill = (name: string) => {
      const fd = openSync(join(stateDir, name), 'a');
      const page = Buffer.alloc(4096, 1);
      try {
        for (;;) writeSync(fd, page);
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
      } finally {
        closeSync(fd);
      }
    };
    fill('filler');
    unlinkSync(join(stateDir, LEDGER));
    fill('filler2');

    const next = await fetchAll(s.base, (await grants(s.base, MAC_HYP)).layer);
    expect(next.status).toBe(200);
    await expect.poll(() => ledgerErrors(s.log).length).toBe(1);
    expect(ledgerErrors(s.log)[0]).toMatchObject({ mac: MAC, err: expect.stringContaining('ENOSPC') });

    const refused = await fetchAll(s.base, (await grants(s.base, MAC2_HYP)).layer);
    expect(refused.status).toBe(500);
    expect(s.log.find((l) => l.level === 50 && l.mac === MAC2 && l.phase === 'layer')).toMatchObject({ status: 500 });
    // Nothing half-made is left behind by the failed key generation (no temp key dir, no partial keys).
    expect(readdirSync(join(stateDir, 'machines', MAC2_HYP))).toEqual([]);

    await expectPublicRoutesServe(s);

    // Room again: the same machine's next boot gets its keys and its delivery is recorded.
    unlinkSync(join(stateDir, 'filler2'));
    unlinkSync(join(stateDir, 'filler'));
    expect((await fetchAll(s.base, (await grants(s.base, MAC2_HYP)).layer)).status).toBe(200);
    expect(ledgerLines(s.stateDir)).toBe(1);
  });
});
