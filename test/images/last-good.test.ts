import { copyFile, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cacheArtifactStore } from '../../server/app/cache-artifact-store.ts';
import { ImageBuilds } from '../../server/app/image-builds.ts';
import type { Config } from '../../server/config/types.ts';
import { Metrics } from '../../server/events/metrics.ts';
import { Timeline } from '../../server/events/timeline.ts';
import { createHttpServer } from '../../server/http/server.ts';
import { ImageCache } from '../../server/images/cache.ts';
import { silentLogger } from '../../server/log.ts';
import { writeConfig } from '../http/fixtures.ts';
import { bootableLayer, dockerSaveArchive, rawTar } from '../fixtures/images/hostile.ts';

/**
 * Issue 14, "last good id still served": a running server whose image source is replaced by a
 * hostile archive keeps serving the last good build (script, kernel, rootfs) while the failed
 * build is reported with its reason, and the failure leaves nothing in the cache dir.
 */

const MAC = '52:54:00:14:00:02';
const MAC_HYP = '52-54-00-14-00-02';
const READ = 'last-good-read-token-14';

describe('a hostile rebuild under a running server', () => {
  let work: string;
  let source: string;
  let app: FastifyInstance;
  let builds: ImageBuilds;
  let cache: ImageCache;
  let base: string;
  let good: Buffer;
  let n = 0;

  const get = (path: string) => fetch(`${base}${path}`, { headers: { authorization: `Bearer ${READ}` } });
  const scriptImageId = async () => {
    const script = await (await get(`/machines/${MAC_HYP}/boot.ipxe`)).text();
    return /\/images\/([0-9a-f]{16})\/vmlinuz/.exec(script)?.[1];
  };
  /** Puts `layers` (bottom first) at the configured source path, as an admin replacing the archive would. */
  const replaceSource = async (layers: Buffer[]) => {
    const next = join(work, `next-${n++}.tar`);
    await dockerSaveArchive(next, layers);
    await copyFile(next, source);
  };

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'netboot-last-good-'));
    source = join(work, 'image.tar');
    good = await bootableLayer({ format: 'posix', files: 20 });
    await dockerSaveArchive(source, [good]);
    const yaml = `server:
  address: 127.0.0.1
  stateDir: ./state
  cacheDir: ./cache
  identity:
    check: off
  api:
    readToken: ${READ}
images:
  hostile:
    source: oci-archive:${source}
    initramfs: image
machines:
  ${MAC}:
    hostname: steady
defaults:
  image: hostile
`;
    await mkdir(join(work, 'state'), { recursive: true });
    const config: Config = writeConfig(work, yaml);
    const metrics = new Metrics();
    cache = new ImageCache({ cacheDir: config.server.cacheDir, log: silentLogger });
    builds = new ImageBuilds(cache, () => config, silentLogger, metrics);
    app = await createHttpServer({
      getConfig: () => config,
      artifacts: cacheArtifactStore(cache, builds),
      timeline: new Timeline({ metrics }),
      metrics,
      log: silentLogger,
      stateDir: config.server.stateDir,
      rebuild: (name) => builds.request(name, { pull: false }),
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  }, 120_000);

  afterAll(async () => {
    builds?.stop();
    await app?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('serves the last good build after each hostile rebuild fails, reporting why; nothing is left behind', async () => {
    await builds.request('hostile', { pull: false });
    expect(builds.state('hostile')).toBe('idle');
    const goodId = await cache.currentId('hostile');
    expect(goodId).toMatch(/^[0-9a-f]{16}$/);
    expect(await scriptImageId()).toBe(goodId);

    const hostile: [string, Buffer[], RegExp][] = [
      ['a hard link out of the root', [good, rawTar([{ name: 'a', data: 'A' }, { name: 'h', type: 'link', linkname: '../a' }])], /tar entry "h" at offset \d+: hard link target "\.\.\/a" is outside the root/],
      ['a non-numeric PAX size', [good, rawTar([{ name: 'carrier', pax: { size: 'abc' }, data: 'x' }])], /size is not a number in a PAX record/],
      ['a truncated layer', [good.subarray(0, Math.floor(good.length / 2 / 512) * 512 + 100)], /truncated tar archive/],
    ];
    for (const [what, layers, reason] of hostile) {
      await replaceSource(layers);
      await builds.request('hostile', { pull: false });
      expect(builds.state('hostile'), what).toBe('failed');
      expect(builds.error('hostile'), what).toMatch(reason);
      const listed = (await (await get('/api/images')).json()) as { images: { name: string; currentId: string; state: string }[] };
      expect(listed.images.find((i) => i.name === 'hostile'), what).toMatchObject({ currentId: goodId, state: 'ready' });
      // Machines still boot the good build: their script names it, and its files are served.
      expect(await scriptImageId(), what).toBe(goodId);
      const kernel = await get(`/images/${goodId}/vmlinuz?mac=${MAC_HYP}`);
      expect(kernel.status, what).toBe(200);
      expect(await kernel.text()).toBe('KERNEL-hostile');
      expect((await get(`/images/${goodId}/rootfs.squashfs`)).status, what).toBe(200);
      const left = (await readdir(cache.imagesDir)).filter((name) => name.startsWith('.tmp-') || name.endsWith('.lock'));
      expect(left, what).toEqual([]);
    }
  }, 180_000);
});
