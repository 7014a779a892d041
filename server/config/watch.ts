import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import type { Logger } from '../log.ts';
import { ConfigError, isEmptyConfigText, loadConfigWithText, setsServerAddress } from './load.ts';
import type { Config } from './types.ts';

export interface ConfigStoreEvents {
  change: [config: Config, previous: Config];
  rejected: [error: ConfigError | Error];
}

/** A config and the exact file text it was parsed from. */
export interface LoadedConfig {
  config: Config;
  text: string;
}

/**
 * Why a new version of the file must not replace the one in force although it validates: it looks like a file
 * caught mid-save (an editor's non-atomic write, a `>` redirect) or an edit that lost its substance. Every field
 * has a default, so an empty or truncated file is a *valid* config that serves nothing on 127.0.0.1.
 * A config that really means this can still be applied by restarting the server.
 */
export function reloadProblems(previous: LoadedConfig, next: LoadedConfig): string[] {
  const problems: string[] = [];
  if (isEmptyConfigText(next.text)) {
    problems.push('the file is empty (caught mid-save?): keeping the config in force until a complete version is written');
    return problems;
  }
  if (setsServerAddress(previous.text) && !setsServerAddress(next.text)) {
    problems.push(`server.address was removed: it would fall back to 127.0.0.1 (was ${previous.config.server.address})`);
  }
  const { machines: before, images: imagesBefore } = previous.config;
  const { machines: after, images: imagesAfter } = next.config;
  if (before.size > 0 && after.size === 0) problems.push(`all ${before.size} machines vanished at once (a truncated file?)`);
  if (imagesBefore.size > 0 && imagesAfter.size === 0) problems.push(`all ${imagesBefore.size} images vanished at once (a truncated file?)`);
  return problems;
}

/** A reload that validates but looks like a half-written file (see reloadProblems). */
export class SuspiciousReloadError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`${file}: ${problems.join('; ')} — restart the server to apply such a config on purpose`);
    this.name = 'SuspiciousReloadError';
  }
}

/**
 * Holds the config in force. A running server reads `store.current` on every request, so a
 * reload is one reference swap: nothing is ever half-applied. The file's folder (which holds
 * machines/) is watched; an edit that fails validation, or looks like a file caught mid-save
 * (reloadProblems), is logged and the old config stays. The file is read once per reload and
 * the text read is what gets parsed and remembered, so the last event of a save always leads to
 * a read of the final content.
 */
export class ConfigStore extends EventEmitter<ConfigStoreEvents> {
  #current: Config;
  /** The text `#current` was parsed from; null until known (read lazily when constructed from a Config). */
  #currentText: string | null = null;
  #watchers = new Map<string, FSWatcher>();
  #debounceMs = 150;
  #timer: NodeJS.Timeout | null = null;
  #lastFingerprint = '';
  #reloading: Promise<void> = Promise.resolve();

  constructor(
    initial: Config,
    private readonly log: Logger,
    initialText?: string,
  ) {
    super();
    this.#current = initial;
    this.#currentText = initialText ?? null;
  }

  static open(file: string, log: Logger): ConfigStore {
    const { config, text } = loadConfigWithText(file);
    return new ConfigStore(config, log, text);
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
    if (this.#currentText === null) this.#currentText = this.#readText();
    this.#lastFingerprint = this.#fingerprint(this.#currentText ?? '');
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
    const file = this.#current.file;
    // Events for other files in the folder (a log written there) change nothing: skip the parse.
    const text = this.#readText();
    if (text !== null && this.#fingerprint(text) === this.#lastFingerprint) return;
    let loaded: LoadedConfig | null = null;
    let error: Error | null = null;
    try {
      loaded = loadConfigWithText(file);
    } catch (err) {
      error = err as Error;
    }
    // The fingerprint is of the text actually parsed (a failed read counts as empty).
    const fingerprint = this.#fingerprint(loaded?.text ?? this.#readText() ?? '');
    if (fingerprint === this.#lastFingerprint) return;
    this.#lastFingerprint = fingerprint;
    if (loaded && this.#currentText !== null) {
      const problems = reloadProblems({ config: this.#current, text: this.#currentText }, loaded);
      if (problems.length > 0) error = new SuspiciousReloadError(file, problems);
    }
    if (error || !loaded) {
      const rejected = error ?? new Error(`${file}: unreadable`);
      this.log.error({ phase: 'config', file, errors: rejected.message.split('\n') }, 'config rejected, previous config stays in force');
      this.emit('rejected', rejected);
      return;
    }
    const next = loaded.config;
    const previous = this.#current;
    this.#current = next;
    this.#currentText = loaded.text;
    this.log.info(
      { phase: 'config', file, machines: next.machines.size, images: next.images.size, added: added(previous, next) },
      'config reloaded',
    );
    this.emit('change', next, previous);
  }

  #readText(): string | null {
    try {
      return readFileSync(this.#current.file, 'utf8');
    } catch {
      return null;
    }
  }

  /** The file's text plus the machines/ folder names: changes to either may change the config. */
  #fingerprint(text: string): string {
    let folders: string[] = [];
    try {
      folders = readdirSync(`${this.#current.baseDir}/machines`);
    } catch {
      /* no machines/ folder */
    }
    return createHash('sha256').update(text).update(JSON.stringify(folders.sort())).digest('hex');
  }
}

function added(previous: Config, next: Config): string[] {
  return [...next.machines.keys()].filter((mac) => !previous.machines.has(mac));
}
