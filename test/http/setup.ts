import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Config } from '../../server/config/types.ts';
import { Metrics } from '../../server/events/metrics.ts';
import { Timeline } from '../../server/events/timeline.ts';
import { createHttpServer, type HttpDeps } from '../../server/http/server.ts';
import { silentLogger } from '../../server/log.ts';
import { DirArtifactStore, tempDir, writeConfig } from './fixtures.ts';
import { mkdirSync } from 'node:fs';

export const MAC = '52:54:00:12:34:56';
export const MAC_HYP = '52-54-00-12-34-56';

/**
 * `identity` (server.identity.check) is off by default here: these tests inject requests, which
 * have no neighbour entry. Identity evidence is tested over real namespaces in test/boot/.
 */
export function baseYaml(extra: { defaults?: string; images?: string; machines?: string; server?: string; identity?: 'evidence' | 'off' } = {}): string {
  return `server:
  address: 127.0.0.1
  httpPort: 8080
  stateDir: ./state
  cacheDir: ./cache
  identity:
    check: ${extra.identity ?? 'off'}
${extra.server ?? ''}
images:
  demo:
    source: docker:netboot/demo:latest
    cmdline: console=ttyS0
${extra.images ?? ''}
machines:
  ${MAC}:
    hostname: demo1
    cmdline: quiet
    vars:
      role: worker
${extra.machines ?? ''}
defaults:
  image: demo
${extra.defaults ?? ''}
`;
}

export interface Harness {
  dir: string;
  config: Config;
  store: DirArtifactStore;
  timeline: Timeline;
  metrics: Metrics;
  app: FastifyInstance;
  deps: HttpDeps;
  setConfig(yaml: string, folders?: Record<string, Record<string, string | Buffer>>): void;
  /** A second server over the same state dir (a restart). */
  restart(): Promise<FastifyInstance>;
  close(): Promise<void>;
}

export async function harness(
  yaml = baseYaml(),
  folders: Record<string, Record<string, string | Buffer>> = {},
  overrides: Partial<HttpDeps> = {},
): Promise<Harness> {
  const tmp = tempDir();
  const cacheRoot = join(tmp.path, 'cache');
  mkdirSync(cacheRoot, { recursive: true });
  let config = writeConfig(tmp.path, yaml, folders);
  const store = new DirArtifactStore(cacheRoot);
  const metrics = new Metrics();
  const timeline = new Timeline({ metrics, isConfigured: (mac) => config.machines.has(mac) });
  const deps: HttpDeps = {
    getConfig: () => config,
    artifacts: store,
    timeline,
    metrics,
    log: silentLogger,
    stateDir: join(tmp.path, 'state'),
    ...overrides,
  };
  const app = await createHttpServer(deps);
  const apps = [app];
  return {
    dir: tmp.path,
    get config() {
      return config;
    },
    store,
    timeline,
    metrics,
    app,
    deps,
    setConfig(text, more = {}) {
      config = writeConfig(tmp.path, text, more);
    },
    async restart() {
      const again = await createHttpServer(deps);
      apps.push(again);
      return again;
    },
    async close() {
      for (const a of apps) await a.close();
      tmp.cleanup();
    },
  };
}

/** Every `goto X` / `--default X` / `item X` target of an iPXE script has a `:X` label. */
export function assertLabelsResolve(script: string): string[] {
  const labels = new Set([...script.matchAll(/^:(\S+)$/gm)].map((m) => m[1]!));
  const targets = [...script.matchAll(/goto (\S+)/g)].map((m) => m[1]!).filter((t) => !t.startsWith('${'));
  const items = [...script.matchAll(/^item (?!--)(\S+)/gm)].map((m) => m[1]!);
  const defaults = [...script.matchAll(/--default (\S+)/g)].map((m) => m[1]!);
  return [...targets, ...items, ...defaults].filter((t) => !labels.has(t));
}
