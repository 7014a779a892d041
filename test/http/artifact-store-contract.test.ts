import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cacheArtifactStore } from '../../server/app/cache-artifact-store.ts';
import type { Image } from '../../server/config/types.ts';
import { Metrics } from '../../server/events/metrics.ts';
import { Timeline } from '../../server/events/timeline.ts';
import type { ArtifactStore } from '../../server/http/artifact-store.ts';
import { createHttpServer } from '../../server/http/server.ts';
import { ImageCache } from '../../server/images/cache.ts';
import { silentLogger } from '../../server/log.ts';
import { syntheticOciArchive } from '../fixtures/images/oci-synthetic.ts';
import { addImage, DirArtifactStore, writeConfig } from './fixtures.ts';
import { MAC_HYP, baseYaml } from './setup.ts';

/**
 * The ArtifactStore contract, run against the fake the HTTP tests use and the real image cache,
 * so the fake can never again accept what the real one refuses. Each store is set up with one
 * built image named `demo`; the HTTP answers are checked over a real listening server.
 */
interface Subject {
  store: ArtifactStore;
  builtId: string;
  cleanup(): Promise<void>;
}

async function fakeStore(): Promise<Subject> {
  const dir = await mkdtemp(join(tmpdir(), 'netboot-contract-fake-'));
  const store = new DirArtifactStore(dir);
  const { id } = addImage(store, 'demo');
  return { store, builtId: id, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

async function realStore(): Promise<Subject> {
  const dir = await mkdtemp(join(tmpdir(), 'netboot-contract-real-'));
  const archive = join(dir, 'image.tar');
  await syntheticOciArchive(archive);
  const cache = new ImageCache({ cacheDir: join(dir, 'cache'), log: silentLogger });
  const image: Image = { name: 'demo', source: `oci-archive:${archive}`, cmdline: '', root: 'ram', initramfs: 'netboot', init: '/sbin/init', compression: 'zstd', platform: 'linux/amd64' };
  const built = await cache.build(image);
  return { store: cacheArtifactStore(cache), builtId: built.id, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

describe.each([
  ['the HTTP tests\u2019 DirArtifactStore', fakeStore],
  ['the real ImageCache', realStore],
])('ArtifactStore contract: %s', (_name, make) => {
  let subject: Subject;
  let base: string;
  let close: () => Promise<void>;
  let configDir: string;

  beforeAll(async () => {
    subject = await make();
    configDir = await mkdtemp(join(tmpdir(), 'netboot-contract-config-'));
    await mkdir(join(configDir, 'state'), { recursive: true });
    const config = writeConfig(configDir, baseYaml());
    const metrics = new Metrics();
    const app = await createHttpServer({
      getConfig: () => config,
      artifacts: subject.store,
      timeline: new Timeline({ metrics }),
      metrics,
      log: silentLogger,
      stateDir: join(configDir, 'state'),
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const address = app.server.address() as { port: number };
    base = `http://127.0.0.1:${address.port}`;
    close = () => app.close();
  }, 120_000);

  afterAll(async () => {
    await close?.();
    await subject?.cleanup();
    if (configDir) await rm(configDir, { recursive: true, force: true });
  });

  it('a built image: its current id, manifest and artifact paths', async () => {
    const { store, builtId } = subject;
    expect(await store.currentId('demo')).toBe(builtId);
    expect((await store.manifest(builtId))?.artifacts['vmlinuz']?.size).toBeGreaterThan(0);
    expect((await store.list()).map((m) => m.id)).toContain(builtId);
    const path = store.artifactPath(builtId, 'vmlinuz');
    expect(path).not.toBeNull();
    expect((await readFile(path!)).length).toBe((await store.manifest(builtId))!.artifacts['vmlinuz']!.size);
  });

  it('ids it cannot hold are answered with null, never an exception', async () => {
    const { store } = subject;
    for (const id of ['nope', '../etc', '..', '', 'a/b', '0123456789abcdef0']) {
      expect(store.artifactPath(id, 'vmlinuz'), id).toBeNull();
      expect(await store.manifest(id), id).toBeNull();
    }
    expect(await store.currentId('never-built')).toBeNull();
  });

  it('over HTTP: unknown and malformed ids are 404, never 500; the built one is served', async () => {
    const status = async (path: string) => (await fetch(`${base}${path}`)).status;
    expect(await status('/images/nope/vmlinuz')).toBe(404);
    expect(await status('/images/0123456789abcdef/vmlinuz')).toBe(404);
    expect(await status('/images/%2e%2e/vmlinuz')).toBe(404);
    expect(await status(`/images/${subject.builtId}/no-such-artifact`)).toBe(404);
    expect(await status(`/machines/${MAC_HYP}/layer?image=nope`)).toBe(404);
    expect(await status(`/machines/${MAC_HYP}/layer?image=0123456789abcdef`)).toBe(404);
    const response = await fetch(`${base}/images/${subject.builtId}/vmlinuz`);
    expect(response.status).toBe(200);
    expect((await response.arrayBuffer()).byteLength).toBe((await subject.store.manifest(subject.builtId))!.artifacts['vmlinuz']!.size);
  });
});
