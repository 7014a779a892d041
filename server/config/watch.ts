import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import type { Logger } from '../log.ts';
import { ConfigError, loadConfig } from './load.ts';
import type { Config } from './types.ts';

export interface ConfigStoreEvents {
  change: [config: Config, previous: Config];
  rejected: [error: ConfigError | Error];
}

/**
 * Holds the config in force. A running server reads `store.current` on every request, so a
 * reload is one reference swap: nothing is ever half-applied. The file's folder (which holds
 * machines/) is watched; an edit that fails validation is logged and the old config stays.
 */
export class ConfigStore extends EventEmitter<ConfigStoreEvents> {
  #current: Config;
  #watchers = new Map<string, FSWatcher>();
  #debounceMs = 150;
  #timer: NodeJS.Timeout | null = null;
  #lastFingerprint = '';
  #reloading: Promise<void> = Promise.resolve();

  constructor(
    initial: Config,
    private readonly log: Logger,
  ) {
    super();
    this.#current = initial;
  }

  static open(file: string, log: Logger): ConfigStore {
    return new ConfigStore(loadConfig(file), log);
  }

  get current(): Config {
    return this.#current;
  }

  /**
   * Starts watching the config's folder and its machines/ folder (non-recursive inotify
   * watches: Node 20's recursive mode on Linux misses files replaced by rename, which is how
   * editors save). `debounceMs` folds the burst of events one save makes.
   */
  watch(debounceMs = 150): void {
    if (this.#watchers.size) return;
    this.#debounceMs = debounceMs;
    this.#lastFingerprint = this.#fingerprint();
    this.#watchDir(this.#current.baseDir);
    this.#watchDir(join(this.#current.baseDir, 'machines'));
  }

  close(): void {
    for (const watcher of this.#watchers.values()) watcher.close();
    this.#watchers.clear();
    if (this.#timer) clearTimeout(this.#timer);
  }

  #watchDir(dir: string): void {
    if (this.#watchers.has(dir)) return;
    try {
      const watcher = watch(dir, () => this.#schedule());
      watcher.on('error', () => {
        watcher.close();
        this.#watchers.delete(dir);
      });
      this.#watchers.set(dir, watcher);
    } catch {
      // machines/ does not exist yet: the folder watch sees it appear and #schedule re-arms.
    }
  }

  /** Re-reads the file now; resolves once the new config is in force or rejected. */
  reload(): Promise<void> {
    this.#reloading = this.#reloading.then(() => this.#reloadNow());
    return this.#reloading;
  }

  #schedule(): void {
    if (this.#watchers.size === 0) return;
    this.#watchDir(join(this.#current.baseDir, 'machines'));
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.reload(), this.#debounceMs);
  }

  async #reloadNow(): Promise<void> {
    const fingerprint = this.#fingerprint();
    if (fingerprint === this.#lastFingerprint) return;
    this.#lastFingerprint = fingerprint;
    const file = this.#current.file;
    let next: Config;
    try {
      next = loadConfig(file);
    } catch (err) {
      const error = err as Error;
      this.log.error({ phase: 'config', file, errors: error.message.split('\n') }, 'config rejected, previous config stays in force');
      this.emit('rejected', error);
      return;
    }
    const previous = this.#current;
    this.#current = next;
    this.log.info(
      { phase: 'config', file, machines: next.machines.size, images: next.images.size, added: added(previous, next) },
      'config reloaded',
    );
    this.emit('change', next, previous);
  }

  /** The file's text plus the machines/ folder names: changes to either may change the config. */
  #fingerprint(): string {
    const { file, baseDir } = this.#current;
    const read = <T>(fn: () => T, fallback: T): T => {
      try {
        return fn();
      } catch {
        return fallback;
      }
    };
    const text = read(() => readFileSync(file), Buffer.alloc(0));
    const folders = read(() => readdirSync(`${baseDir}/machines`), [] as string[]);
    return createHash('sha256').update(text).update(JSON.stringify(folders.sort())).digest('hex');
  }
}

function added(previous: Config, next: Config): string[] {
  return [...next.machines.keys()].filter((mac) => !previous.machines.has(mac));
}
