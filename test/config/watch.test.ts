import { mkdtempSync, writeFileSync, renameSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config/load.ts';
import { ConfigStore } from '../../server/config/watch.ts';
import { lookupMachine } from '../../server/config/types.ts';
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
    expect(lookupMachine(store!.current, '52:54:00:00:00:02')).toEqual({ kind: 'deny' });
    const changed = once(store!, 'change');
    saveLikeAnEditor(file, `${base}  52:54:00:00:00:02: { hostname: second }\n`);
    await changed;
    expect(lookupMachine(store!.current, '52:54:00:00:00:02')).toMatchObject({ kind: 'machine', machine: { hostname: 'second' } });
  });

  it('keeps the previous config when a new version is invalid, and recovers when it is fixed', async () => {
    const { file } = start();
    const before = store!.current;
    const rejected = once(store!, 'rejected');
    saveLikeAnEditor(file, `${base}  52:54:00:00:00:03: { hostname: third, image: nosuch }\n`);
    const [error] = await rejected;
    expect(String((error as Error).message)).toMatch(/netboot\.yaml:9:\d+ machines\.52:54:00:00:00:03\.image: unknown image "nosuch"/);
    expect(store!.current).toBe(before);
    expect(lookupMachine(store!.current, '52:54:00:00:00:01')).toMatchObject({ kind: 'machine', machine: { hostname: 'first' } });

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
