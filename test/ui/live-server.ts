import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import puppeteer, { type Browser } from 'puppeteer-core';
import { ConfigStore } from '../../server/config/watch.ts';
import { Metrics } from '../../server/events/metrics.ts';
import { Timeline } from '../../server/events/timeline.ts';
import { createHttpServer, type HttpDeps } from '../../server/http/server.ts';
import { silentLogger } from '../../server/log.ts';
import { DirArtifactStore, tempDir } from '../http/fixtures.ts';

/** Debian's chromium (scripts/setup-host.sh test): puppeteer-core drives it, nothing is downloaded. */
export const CHROMIUM = process.env.NETBOOT_CHROMIUM ?? '/usr/bin/chromium';

export interface LiveServer {
  dir: string;
  file: string;
  url: string;
  store: ConfigStore;
  artifacts: DirArtifactStore;
  timeline: Timeline;
  app: FastifyInstance;
  close(): Promise<void>;
}

/**
 * A real HTTP server on loopback (port chosen by the kernel) over a config file that a real
 * ConfigStore watches, as `netboot serve` runs it: the status page's edits go through the reload.
 */
export async function startLiveServer(yaml: string, overrides: Partial<HttpDeps> = {}): Promise<LiveServer> {
  const tmp = tempDir('netboot-ui-');
  const file = join(tmp.path, 'netboot.yaml');
  writeFileSync(file, yaml, { mode: 0o600 });
  mkdirSync(join(tmp.path, 'cache'), { recursive: true });
  const store = ConfigStore.open(file, silentLogger);
  store.watch(50);
  const artifacts = new DirArtifactStore(join(tmp.path, 'cache'));
  const timeline = new Timeline({ metrics: new Metrics(), isConfigured: (mac) => store.current.machines.has(mac) });
  const app = await createHttpServer({
    getConfig: () => store.current,
    artifacts,
    timeline,
    metrics: new Metrics(),
    log: silentLogger,
    stateDir: join(tmp.path, 'state'),
    ...overrides,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    dir: tmp.path,
    file,
    url: `http://127.0.0.1:${port}`,
    store,
    artifacts,
    timeline,
    app,
    async close() {
      store.close();
      await app.close();
      tmp.cleanup();
    },
  };
}

export function launchChromium(): Promise<Browser> {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container: chromium's sandbox needs user namespaces it may not get.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--lang=en-GB'],
  });
}
