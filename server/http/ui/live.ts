import type { ServerResponse } from 'node:http';
import type { Timeline } from '../../events/timeline.ts';

/** What a stream follows: the whole fleet, one machine, or the images. */
export type Topic = { kind: 'fleet' } | { kind: 'machine'; mac: string } | { kind: 'images' };

export interface LiveRenderers {
  /** Fleet rows for these MACs (the same HTML the page renders). */
  rows(macs: string[]): Promise<{ mac: string; html: string; attention: string | null; state: string }[]>;
  machine(mac: string): Promise<string>;
  /** The images section, and a key that changes when it does (build state, ids, progress). */
  images(): Promise<{ html: string; key: string }>;
}

export interface LiveOptions {
  maxClients: number;
  /** Changes are gathered this long and sent as one event per stream. */
  flushMs: number;
  /** MACs changed within one flush above which fleet pages just reload. */
  maxDirty: number;
  /** A stream whose client stopped reading holds at most this much before it is dropped. */
  maxBufferedBytes: number;
  heartbeatMs: number;
  /** How often the images section is re-rendered while someone watches it (builds have no events). */
  imagesEveryMs: number;
  /** How often booting machines are re-rendered (to show "stuck" without a new event). */
  sweepEveryMs: number;
}

export const DEFAULT_LIVE: LiveOptions = {
  maxClients: 64,
  flushMs: 200,
  maxDirty: 2000,
  maxBufferedBytes: 1 << 20,
  heartbeatMs: 25_000,
  imagesEveryMs: 2_000,
  sweepEveryMs: 30_000,
};

interface Client {
  res: ServerResponse;
  topic: Topic;
  /** Checked before each send: a session whose token left the config loses its stream too. */
  allowed: () => boolean;
}

/**
 * Server-Sent Events for the status page. Timeline records only mark a MAC dirty; one timer
 * per hub (not per stream) renders each dirty MAC once and sends it to every stream that
 * follows it, so a burst of records costs one render per MAC per flush whatever the number of
 * viewers. Streams are capped, and a stream that stops reading is dropped, not buffered.
 */
export class LiveHub {
  readonly #clients = new Set<Client>();
  readonly #dirty = new Set<string>();
  #overflow = false;
  #flushTimer: NodeJS.Timeout | null = null;
  /** Flushes run one after another. */
  #chain: Promise<void> = Promise.resolve();
  #pending = 0;
  readonly #timers: NodeJS.Timeout[] = [];
  #imagesKey = '';
  readonly #unsubscribe: () => void;
  readonly options: LiveOptions;

  constructor(
    timeline: Timeline,
    private readonly render: LiveRenderers,
    options: Partial<LiveOptions> = {},
    private readonly bootingMacs: () => string[] = () => [],
  ) {
    this.options = { ...DEFAULT_LIVE, ...options };
    this.#unsubscribe = timeline.subscribe((mac) => this.markDirty(mac));
    const every = (ms: number, fn: () => void) => {
      const timer = setInterval(() => {
        if (this.#clients.size) fn();
      }, ms);
      timer.unref();
      this.#timers.push(timer);
    };
    every(this.options.heartbeatMs, () => this.#broadcast(() => ': keepalive\n\n'));
    every(this.options.imagesEveryMs, () => void this.#pushImages());
    every(this.options.sweepEveryMs, () => this.bootingMacs().forEach((mac) => this.markDirty(mac)));
  }

  get size(): number {
    return this.#clients.size;
  }

  /** Takes over a response as an event stream; false when the cap is reached (answer 503). */
  open(res: ServerResponse, topic: Topic, allowed: () => boolean = () => true): boolean {
    if (this.#clients.size >= this.options.maxClients) return false;
    const client: Client = { res, topic, allowed };
    this.#clients.add(client);
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', connection: 'keep-alive' });
    res.write('retry: 3000\n\n');
    res.on('close', () => this.#clients.delete(client));
    return true;
  }

  markDirty(mac: string): void {
    if (!this.#clients.size) return;
    if (this.#dirty.size >= this.options.maxDirty) this.#overflow = true;
    else this.#dirty.add(mac);
    if (!this.#flushTimer) {
      this.#flushTimer = setTimeout(() => {
        this.#flushTimer = null;
        this.#pending++;
        this.#chain = this.#chain
          .then(() => this.#flush())
          .catch(() => undefined)
          .finally(() => this.#pending--);
      }, this.options.flushMs);
    }
  }

  /** Resolves once pending changes have been sent (tests, bench). */
  async settled(): Promise<void> {
    while (this.#flushTimer || this.#pending) {
      if (this.#pending) await this.#chain;
      else await new Promise((r) => setTimeout(r, this.options.flushMs));
    }
  }

  close(): void {
    this.#unsubscribe();
    for (const timer of this.#timers) clearInterval(timer);
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    for (const client of this.#clients) client.res.end();
    this.#clients.clear();
  }

  async #flush(): Promise<void> {
    const macs = [...this.#dirty];
    const overflow = this.#overflow;
    this.#dirty.clear();
    this.#overflow = false;
    const clients = [...this.#clients];
    if (clients.some((c) => c.topic.kind === 'fleet')) {
      if (overflow) this.#broadcast((c) => (c.topic.kind === 'fleet' ? event('reload', '{}') : null));
      else if (macs.length) {
        const rows = await this.render.rows(macs);
        const data = event('rows', JSON.stringify(rows));
        this.#broadcast((c) => (c.topic.kind === 'fleet' ? data : null));
      }
    }
    const wanted = new Set(macs);
    const machineTopics = new Set(clients.flatMap((c) => (c.topic.kind === 'machine' && (overflow || wanted.has(c.topic.mac)) ? [c.topic.mac] : [])));
    for (const mac of machineTopics) {
      const data = event('machine', JSON.stringify({ mac, html: await this.render.machine(mac) }));
      this.#broadcast((c) => (c.topic.kind === 'machine' && c.topic.mac === mac ? data : null));
    }
  }

  async #pushImages(): Promise<void> {
    if (![...this.#clients].some((c) => c.topic.kind === 'images')) return;
    const { html, key } = await this.render.images();
    if (key === this.#imagesKey) return;
    this.#imagesKey = key;
    const data = event('images', JSON.stringify({ html }));
    this.#broadcast((c) => (c.topic.kind === 'images' ? data : null));
  }

  #broadcast(message: (client: Client) => string | null): void {
    for (const client of this.#clients) {
      const text = message(client);
      if (text === null) continue;
      if (client.res.writableLength > this.options.maxBufferedBytes) {
        client.res.destroy();
        this.#clients.delete(client);
        continue;
      }
      if (!client.allowed()) {
        client.res.end();
        this.#clients.delete(client);
        continue;
      }
      client.res.write(text);
    }
  }
}

function event(name: string, data: string): string {
  return `event: ${name}\ndata: ${data}\n\n`;
}
