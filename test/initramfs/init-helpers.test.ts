import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BOOT_ASSETS_DIR } from '../../server/initramfs/build.ts';

const run = promisify(execFile);

/**
 * /init's helpers (boot-assets/initramfs/lib/netboot/common.sh) run by the same busybox as
 * in the initramfs, against a real HTTP server on loopback: no VM needed for the download,
 * resume, check and event-queue logic.
 */
describe('initramfs shell helpers under busybox sh', () => {
  let dir: string;
  let bin: string;
  let server: Server;
  let base: string;
  const requests: { url: string; range?: string; body?: string; authorization?: string }[] = [];
  const payload = Buffer.alloc(300_000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'netboot-init-helpers-'));
    bin = join(dir, 'bin');
    await mkdir(bin);
    const { stdout } = await run('/bin/busybox', ['--list']);
    for (const applet of stdout.split('\n').filter(Boolean)) await symlink('/bin/busybox', join(bin, applet));
    let flaky = 0;
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        requests.push({
          url: req.url ?? '',
          range: req.headers.range,
          body: chunks.length ? Buffer.concat(chunks).toString() : undefined,
          authorization: req.headers.authorization,
        });
        if (req.method === 'POST') return void res.writeHead(204).end();
        if (req.url === '/flaky') {
          const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
          const headers: Record<string, string | number> = { 'content-length': payload.length - start };
          if (start) headers['content-range'] = `bytes ${start}-${payload.length - 1}/${payload.length}`;
          res.writeHead(start ? 206 : 200, headers);
          // The first two responses die a third of the way through: the download must resume.
          if (flaky++ < 2) {
            // Cut once the bytes are handed to the kernel (a timer could cut before any left).
            res.write(payload.subarray(start, start + 100_000), () => res.socket?.destroy());
          } else res.end(payload.subarray(start));
          return;
        }
        if (req.url === '/images/abc/manifest.json') {
          const manifest = { id: 'abc', artifacts: { vmlinuz: { size: 5, sha256: 'f'.repeat(64) }, 'rootfs.squashfs': { sha256: 'a1'.repeat(32), size: payload.length } } };
          return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(manifest, null, 2));
        }
        res.writeHead(404).end('no\n');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server?.close();
    server?.closeAllConnections();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const sh = async (script: string) => {
    const common = join(BOOT_ASSETS_DIR, 'initramfs/lib/netboot/common.sh');
    const prelude = `. ${common}; NETBOOT_RUN=${dir}/run; EVENTS_DIR=$NETBOOT_RUN/events; mkdir -p $EVENTS_DIR; `;
    const { stdout } = await run('/bin/busybox', ['sh', '-c', prelude + script], { env: { PATH: bin }, timeout: 60_000 });
    return stdout;
  };

  it('normalises MACs in the spellings firmware and admins use', async () => {
    const out = await sh('for m in AA-BB-CC-DD-EE-0F aa:bb:cc:dd:ee:0f AABBCCDDEE0F; do normalize_mac $m; done; mac_hyphens aa:bb:cc:dd:ee:0f');
    expect(out.split('\n').filter(Boolean)).toEqual(['aa:bb:cc:dd:ee:0f', 'aa:bb:cc:dd:ee:0f', 'aa:bb:cc:dd:ee:0f', 'aa-bb-cc-dd-ee-0f']);
  });

  it('resumes an interrupted download with Range until the size is right', async () => {
    requests.length = 0;
    const out = await sh(`download ${base}/flaky ${dir}/flaky.bin ${payload.length} && echo OK`);
    expect(out).toMatch(/OK\s*$/);
    expect((await readFile(join(dir, 'flaky.bin'))).equals(payload)).toBe(true);
    const ranges = requests.filter((r) => r.url === '/flaky').map((r) => r.range);
    expect(ranges[0]).toBeUndefined();
    expect(ranges.slice(1).every((range) => /^bytes=[1-9]\d*-$/.test(range ?? ''))).toBe(true);
    expect(ranges.length).toBeGreaterThanOrEqual(2);
  });

  it('takes the rootfs size and sha256 from the manifest (a size probe by GET would queue behind root streams), fetching it once', async () => {
    requests.length = 0;
    const out = await sh(`IMAGE=abc; SERVER=${base}; rootfs_size && echo "SIZE $REMOTE_SIZE"; rootfs_size && echo "$(manifest_rootfs sha256)"; IMAGE=nope; rm -f $NETBOOT_RUN/manifest.json; rootfs_size || echo "ERR $DOWNLOAD_ERROR"`);
    expect(out).toContain(`SIZE ${payload.length}\n${'a1'.repeat(32)}\n`);
    expect(out).toMatch(/ERR cannot fetch http:\S+\/images\/nope\/manifest\.json: wget: server returned error: HTTP\/1\.1 404/);
    expect(requests.filter((r) => r.url === '/images/abc/manifest.json')).toHaveLength(1);
  });

  it('reports a 404 at once, without retrying', async () => {
    requests.length = 0;
    const out = await sh(`remote_size ${base}/missing || echo "ERR $DOWNLOAD_ERROR"; download ${base}/missing ${dir}/m.bin || echo "ERR $DOWNLOAD_ERROR"`);
    expect(out).toContain('ERR wget: server returned error: HTTP/1.1 404 Not Found\n');
    expect(out.match(/^ERR .*404/gm)).toHaveLength(2);
    expect(requests.filter((r) => r.url === '/missing')).toHaveLength(2);
  });

  it('tells a whole squashfs from a truncated one or a non-squashfs', async () => {
    const superblock = Buffer.alloc(8192);
    superblock.write('hsqs', 0, 'ascii');
    superblock.writeBigUInt64LE(5000n, 40);
    await writeFile(join(dir, 'whole.sqfs'), superblock);
    await writeFile(join(dir, 'short.sqfs'), superblock.subarray(0, 4096));
    await writeFile(join(dir, 'other.bin'), Buffer.alloc(8192));
    const out = await sh(
      `for f in whole.sqfs short.sqfs other.bin; do check_squashfs ${dir}/$f && echo "$f ok" || echo "$f: $CHECK_ERROR"; done`,
    );
    expect(out.split('\n').filter(Boolean)).toEqual([
      'whole.sqfs ok',
      'short.sqfs: truncated squashfs: superblock says 5000 bytes, file has 4096',
      'other.bin: not a squashfs image (no hsqs magic)',
    ]);
  });

  it('posts queued events in order as valid JSON, escaping the detail', async () => {
    requests.length = 0;
    await sh(
      `SERVER=${base}; MAC=52:54:00:aa:bb:cc; event init 'kernel "x"'; event net 'a\\b'; events_start; event layer '3 entries'; events_stop 10`,
    );
    const posts = requests.filter((r) => r.body !== undefined);
    expect(posts.map((r) => r.url)).toEqual(Array(3).fill('/api/machines/52-54-00-aa-bb-cc/events'));
    const bodies = posts.map((r) => JSON.parse(r.body!) as { phase: string; t: number; detail: string });
    expect(bodies.map((b) => [b.phase, b.detail])).toEqual([
      ['init', 'kernel "x"'],
      ['net', 'a\\b'],
      ['layer', '3 entries'],
    ]);
    expect(bodies.every((b) => typeof b.t === 'number' && b.t > 0)).toBe(true);
  });

  it('sends the event token as a bearer token with every event; a signed URL is masked in events and log lines', async () => {
    requests.length = 0;
    const sig = 'ab'.repeat(32);
    const signed = `${base}/machines/52-54-00-aa-bb-cc/layer?boot=b1&image=i1&exp=99&sig=${sig}`;
    const token = `b1.${'cd'.repeat(32)}`;
    const out = await sh(
      `SERVER=${base}; MAC=52:54:00:aa:bb:cc; EVENT_TOKEN=${token}; events_start; ` +
        `echo "shown: $(mask_url '${signed}')"; echo "plain: $(mask_url '${base}/images/x/rootfs.squashfs?mac=52-54-00-aa-bb-cc')"; ` +
        // what fail() reports for a layer that could not be fetched, and a detail that quotes the raw URL anyway
        `event failed "layer: $(mask_url '${signed}'): wget: server returned error: HTTP/1.1 403 Forbidden"; ` +
        `event failed 'raw: ${signed}'; events_stop 10`,
    );
    expect(out).toContain(`shown: ${base}/machines/52-54-00-aa-bb-cc/layer?(signature hidden)\n`);
    expect(out).toContain(`plain: ${base}/images/x/rootfs.squashfs?mac=52-54-00-aa-bb-cc\n`);
    expect(out).not.toContain(sig);
    const posts = requests.filter((r) => r.body !== undefined);
    expect(posts).toHaveLength(2);
    expect(posts.map((r) => r.authorization)).toEqual([`Bearer ${token}`, `Bearer ${token}`]);
    const details = posts.map((r) => (JSON.parse(r.body!) as { detail: string }).detail);
    expect(details[0]).toBe(`layer: ${base}/machines/52-54-00-aa-bb-cc/layer?(signature hidden): wget: server returned error: HTTP/1.1 403 Forbidden`);
    expect(details[1]).toBe(`raw: ${base}/machines/52-54-00-aa-bb-cc/layer?boot=b1&image=i1&exp=99&sig=(hidden)`);
  });

  it('without a token (an old kernel command line) events go out without an Authorization header', async () => {
    requests.length = 0;
    await sh(`SERVER=${base}; MAC=52:54:00:aa:bb:cc; events_start; event init x; events_stop 10`);
    const posts = requests.filter((r) => r.body !== undefined);
    expect(posts).toHaveLength(1);
    expect(posts[0]!.authorization).toBeUndefined();
  });
});
