import { mkdtempSync, writeFileSync, renameSync, mkdirSync, openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig, loadConfigWithText, parseConfig } from '../../server/config/load.ts';
import { pino } from 'pino';
import { ConfigStore, reloadProblems, SuspiciousReloadError } from '../../server/config/watch.ts';
import type { Config } from '../../server/config/types.ts';
import { planBoot } from '../../server/boot/plan.ts';
import { createLogger, silentLogger } from '../../server/log.ts';

const base = `images:
  lab:
    source: docker:lab:latest
defaults:
  image: lab
  unknown: deny
machines:
  52:54:00:00:00:01: { hostname: first }
`;

describe('ConfigStore hot reload', () => {
  let store: ConfigStore | undefined;
  afterEach(() => store?.close());

  function start(): { file: string; dir: string } {
    const dir = mkdtempSync(join(tmpdir(), 'netboot-watch-'));
    const file = join(dir, 'netboot.yaml');
    writeFileSync(file, base);
    store = new ConfigStore(loadConfig(file), process.env.DEBUG_WATCH ? createLogger('debug', false) : silentLogger);
    store.watch(50);
    return { file, dir };
  }

  /** Editors save by writing a temp file and renaming it over the original. */
  function saveLikeAnEditor(file: string, text: string): void {
    writeFileSync(`${file}.swp`, text);
    renameSync(`${file}.swp`, file);
  }

  it('picks up a machine added to the file without a restart', async () => {
    const { file } = start();
    expect(planBoot(store!.current, '52:54:00:00:00:02')).toEqual({ kind: 'deny' });
    const changed = once(store!, 'change');
    saveLikeAnEditor(file, `${base}  52:54:00:00:00:02: { hostname: second }\n`);
    await changed;
    expect(planBoot(store!.current, '52:54:00:00:00:02')).toMatchObject({ kind: 'boot', machine: { hostname: 'second' } });
  });

  it('keeps the previous config when a new version is invalid, and recovers when it is fixed', async () => {
    const { file } = start();
    const before = store!.current;
    const rejected = once(store!, 'rejected');
    saveLikeAnEditor(file, `${base}  52:54:00:00:00:03: { hostname: third, image: nosuch }\n`);
    const [error] = await rejected;
    expect(String((error as Error).message)).toMatch(/netboot\.yaml:9:\d+ machines\.52:54:00:00:00:03\.image: unknown image "nosuch"/);
    expect(store!.current).toBe(before);
    expect(planBoot(store!.current, '52:54:00:00:00:01')).toMatchObject({ kind: 'boot', machine: { hostname: 'first' } });

    const changed = once(store!, 'change');
    saveLikeAnEditor(file, `${base}  52:54:00:00:00:03: { hostname: third }\n`);
    await changed;
    expect(store!.current.machines.get('52:54:00:00:00:03')?.hostname).toBe('third');
  });

  it('notices a new machine folder', async () => {
    const { dir } = start();
    expect(store!.current.machines.get('52:54:00:00:00:01')?.folder).toBeNull();
    const changed = once(store!, 'change');
    mkdirSync(join(dir, 'machines', 'first'), { recursive: true });
    await changed;
    expect(store!.current.machines.get('52:54:00:00:00:01')?.folder).toBe(join(dir, 'machines', 'first'));
  });
});

const full = `server:
  address: 10.40.0.1
images:
  lab:
    source: docker:lab:latest
defaults:
  image: lab
  unknown: deny
machines:
  52:54:00:00:00:01: { hostname: first }
  52:54:00:00:00:02: { hostname: second }
`;

/** Editors save by writing a temp file and renaming it over the original. */
function saveLikeAnEditor(file: string, text: string): void {
  writeFileSync(`${file}.swp`, text);
  renameSync(`${file}.swp`, file);
}

describe('hot reload refuses a file caught mid-save', () => {
  let store: ConfigStore | undefined;
  afterEach(() => store?.close());
  const logged: { msg: string; errors?: string[] }[] = [];

  function start(text = full): string {
    const dir = mkdtempSync(join(tmpdir(), 'netboot-midsave-'));
    const file = join(dir, 'netboot.yaml');
    writeFileSync(file, text);
    logged.length = 0;
    const log = pino({ level: 'info' }, { write: (line: string) => void logged.push(JSON.parse(line)) });
    store = ConfigStore.open(file, log);
    store.watch(50);
    return file;
  }

  /** Every config the store switched to, in order. */
  function recordChanges(): Config[] {
    const seen: Config[] = [];
    store!.on('change', (config) => seen.push(config));
    return seen;
  }

  /** What `cat new > netboot.yaml` does: truncate in place, then write (here: in two parts, with a pause for an event between). */
  function truncateInPlace(file: string): number {
    const fd = openSync(file, 'r+');
    ftruncateSync(fd, 0);
    return fd;
  }

  it('an emptied file is rejected (the log says why); the complete file written after it is applied', async () => {
    const file = start();
    const before = store!.current;
    const changes = recordChanges();
    const rejected = once(store!, 'rejected');
    const fd = truncateInPlace(file);
    const [error] = await rejected;
    expect(error).toBeInstanceOf(SuspiciousReloadError);
    expect((error as Error).message).toMatch(/file is empty/);
    expect(store!.current).toBe(before);
    expect(store!.current.server.address).toBe('10.40.0.1');
    expect(logged.some((l) => l.msg === 'config rejected, previous config stays in force' && l.errors?.some((e) => /empty/.test(e)))).toBe(true);

    const changed = once(store!, 'change');
    const next = `${full}  52:54:00:00:00:03: { hostname: third }\n`;
    writeSync(fd, next, 0);
    closeSync(fd);
    await changed;
    expect(store!.current.machines.size).toBe(3);
    expect(changes.map((c) => c.machines.size)).toEqual([3]);
  });

  it('a half-written file (cut mid-way) is rejected; the rest of the write lands on the full config', async () => {
    const file = start();
    const changes = recordChanges();
    const fd = truncateInPlace(file);
    const next = `${full}  52:54:00:00:00:04: { hostname: fourth }\n`;
    // Cut right after the images: a valid YAML document with no machines.
    const cut = next.indexOf('defaults:');
    const rejected = once(store!, 'rejected');
    writeSync(fd, next.slice(0, cut), 0);
    const [error] = await rejected;
    expect((error as Error).message).toMatch(/all 2 machines vanished/);
    expect(store!.current.machines.size).toBe(2);

    const changed = once(store!, 'change');
    writeSync(fd, next.slice(cut), cut);
    closeSync(fd);
    await changed;
    expect(store!.current.machines.get('52:54:00:00:00:04')?.hostname).toBe('fourth');
    expect(store!.current.server.address).toBe('10.40.0.1');
    expect(changes).toHaveLength(1);
  });

  it('a save that drops server.address is rejected: the address does not fall back to 127.0.0.1', async () => {
    const file = start();
    const rejected = once(store!, 'rejected');
    saveLikeAnEditor(file, full.replace(/server:\n  address: .*\n/, ''));
    const [error] = await rejected;
    expect((error as Error).message).toMatch(/server\.address was removed: it would fall back to 127\.0\.0\.1 \(was 10\.40\.0\.1\)/);
    expect(store!.current.server.address).toBe('10.40.0.1');
  });

  it('truncate and write in one burst: ends on the complete file and never switches to an empty one', async () => {
    const file = start();
    const changes = recordChanges();
    const changed = once(store!, 'change');
    const next = full.replace('first', 'premier');
    const fd = truncateInPlace(file);
    writeSync(fd, next.slice(0, 40), 0);
    writeSync(fd, next.slice(40), 40);
    closeSync(fd);
    await changed;
    expect(store!.current.machines.get('52:54:00:00:00:01')?.hostname).toBe('premier');
    for (const c of changes) expect(c.machines.size).toBe(2);
  });
});

describe('reloadProblems', () => {
  const loaded = (text: string) => ({ config: parseConfig(text, '/x/netboot.yaml'), text });
  const previous = loaded(full);

  it('accepts an ordinary edit, and edits that keep something of each', () => {
    expect(reloadProblems(previous, loaded(full.replace('second', 'zweite')))).toEqual([]);
    expect(reloadProblems(previous, loaded(full.replace(/  52:54:00:00:00:02.*\n/, '')))).toEqual([]);
    // A config that never set server.address may go on not setting it.
    const noAddress = full.replace(/server:\n  address: .*\n/, '');
    expect(reloadProblems(loaded(noAddress), loaded(noAddress.replace('first', 'one')))).toEqual([]);
  });

  it('rejects empty, comment-only and whitespace files', () => {
    for (const text of ['', '\n\n', '# netboot config\n', '   ']) {
      expect(reloadProblems(previous, loaded(text))).toEqual([expect.stringMatching(/file is empty/)]);
    }
  });

  it('rejects a file that lost server.address, or every machine, or every image', () => {
    expect(reloadProblems(previous, loaded(full.replace(/server:\n  address: .*\n/, '')))).toEqual([expect.stringMatching(/server\.address was removed/)]);
    const machinesGone = full.slice(0, full.indexOf('machines:'));
    expect(reloadProblems(previous, loaded(machinesGone))).toEqual([expect.stringMatching(/all 2 machines vanished/)]);
    const imagesGone = `server:\n  address: 10.40.0.1\ndefaults:\n  unknown: deny\n`;
    expect(reloadProblems(previous, loaded(imagesGone))).toEqual([
      expect.stringMatching(/all 2 machines vanished/),
      expect.stringMatching(/all 1 images vanished/),
    ]);
  });

  it('the text kept with the config is the text parsed', () => {
    const dir = mkdtempSync(join(tmpdir(), 'netboot-text-'));
    writeFileSync(join(dir, 'netboot.yaml'), full);
    expect(loadConfigWithText(join(dir, 'netboot.yaml')).text).toBe(full);
  });
});
