import { stat } from 'node:fs/promises';
import type Dockerode from 'dockerode';
import type { Config, Image } from '../config/types.ts';
import type { Metrics } from '../events/metrics.ts';
import type { BuildProgress, ImageCache } from '../images/cache.ts';
import type { Logger } from '../log.ts';
import { defaultDocker } from '../images/docker-source.ts';
import { watchDockerTag } from '../images/watch.ts';
import { buildImage } from './images.ts';
import { progressReporter } from './progress.ts';

export type BuildState = 'idle' | 'building' | 'failed';

/**
 * Keeps every configured image built while the server runs: builds what is missing at
 * start-up without blocking the rest of the service, watches each source (docker engine
 * events; archives every `server.imageCheckSeconds`): a moved tag or a rewritten archive gives a new id, which
 * machines get at their next boot; the old id stays served), and rebuilds on request.
 * Builds run one at a time: they are CPU-heavy and the machines being served come first.
 */
export class ImageBuilds {
  readonly #state = new Map<string, { state: BuildState; error?: string; progress?: BuildProgress }>();
  readonly #archiveStamps = new Map<string, string>();
  /** One docker tag watcher per image name, with the source it watches. */
  readonly #tagWatchers = new Map<string, { source: string; stop: () => void }>();
  #queue: Promise<void> = Promise.resolve();
  #queued = new Set<string>();
  #timer: NodeJS.Timeout | null = null;
  #stopped = false;

  constructor(
    private readonly cache: ImageCache,
    private readonly getConfig: () => Config,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly docker?: Dockerode,
  ) {}

  state(name: string): BuildState {
    return this.#state.get(name)?.state ?? 'idle';
  }

  error(name: string): string | undefined {
    return this.#state.get(name)?.error;
  }

  /** The last progress report of a running build. */
  progress(name: string): BuildProgress | undefined {
    const entry = this.#state.get(name);
    return entry?.state === 'building' ? entry.progress : undefined;
  }

  /** Queues a build of every configured image, then watches their sources. */
  start(): void {
    for (const name of this.getConfig().images.keys()) void this.request(name, { pull: true });
    this.syncWatchers();
    this.#schedule();
  }

  /**
   * Docker tags are watched through engine events (a moved tag is seen at once, with a slow
   * poll behind it); call again after a config reload so added or removed images follow.
   */
  syncWatchers(): void {
    const images = this.getConfig().images;
    for (const [name, watcher] of this.#tagWatchers) {
      if (images.get(name)?.source !== watcher.source) {
        watcher.stop();
        this.#tagWatchers.delete(name);
      }
    }
    for (const image of images.values()) {
      if (!image.source.startsWith('docker:') || this.#tagWatchers.has(image.name) || this.#stopped) continue;
      const stop = watchDockerTag(
        { docker: this.docker ?? defaultDocker(), ref: image.source.slice('docker:'.length), log: this.log, pollMs: this.getConfig().server.imageCheckSeconds * 1000 },
        () => void this.request(image.name, { pull: false }),
      );
      this.#tagWatchers.set(image.name, { source: image.source, stop });
    }
  }

  /** Queues a build (a cache hit when nothing changed); returns when it has run. */
  request(name: string, options: { pull?: boolean } = {}): Promise<void> {
    if (this.#queued.has(name)) return this.#queue;
    this.#queued.add(name);
    this.#queue = this.#queue.then(() => {
      this.#queued.delete(name);
      return this.#build(name, options.pull ?? true);
    });
    return this.#queue;
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    for (const watcher of this.#tagWatchers.values()) watcher.stop();
    this.#tagWatchers.clear();
  }

  /** Resolves when every queued build has run (for tests and `serve --build-first`). */
  idle(): Promise<void> {
    return this.#queue;
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#check().finally(() => this.#schedule()), this.getConfig().server.imageCheckSeconds * 1000);
    this.#timer.unref();
  }

  /** Archives have no events: a changed size or mtime means a rebuild. */
  async #check(): Promise<void> {
    for (const image of this.getConfig().images.values()) {
      if (image.source.startsWith('oci-archive:') && (await this.#archiveChanged(image))) await this.request(image.name, { pull: false });
    }
  }

  async #archiveChanged(image: Image): Promise<boolean> {
    const path = image.source.slice('oci-archive:'.length);
    const stamp = await stat(path).then((s) => `${s.size}:${s.mtimeMs}`, () => 'missing');
    const changed = this.#archiveStamps.get(image.name) !== stamp;
    this.#archiveStamps.set(image.name, stamp);
    return changed;
  }

  async #build(name: string, pull: boolean): Promise<void> {
    const image = this.getConfig().images.get(name);
    if (!image || this.#stopped) return;
    const log = this.log.child({ phase: 'build', image: name });
    const previous = await this.cache.currentId(name);
    const building: { state: BuildState; progress?: BuildProgress } = { state: 'building' };
    this.#state.set(name, building);
    const report = progressReporter(this.log, false);
    try {
      const built = await buildImage(this.cache, image, log, {
        docker: this.docker,
        pull,
        onProgress: (p) => {
          building.progress = p;
          report(p);
        },
      });
      this.#state.set(name, { state: 'idle' });
      this.metrics.imageBuilt(name, built.manifest.buildSeconds, built.cached ? 'cached' : 'ok');
      if (built.id !== previous) {
        log.info({ id: built.id, previous, kernel: built.manifest.kernelVersion, cached: built.cached }, 'image ready: machines get this id at their next boot');
      }
      if (image.source.startsWith('oci-archive:')) await this.#archiveChanged(image);
    } catch (err) {
      const message = (err as Error).message;
      const unchanged = this.#state.get(name)?.error === message;
      this.#state.set(name, { state: 'failed', error: message });
      this.metrics.imageBuilt(name, 0, 'failed');
      // A failing periodic check repeats every interval: log it once until it changes.
      if (!unchanged) log.error({ err: message, servingId: previous }, previous ? 'image build failed; the last good build stays served' : 'image build failed');
    }
  }
}
