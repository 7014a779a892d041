import { afterEach, describe, expect, it } from 'vitest';
import { capturedLog } from '../lab/captured-log.ts';
import { addImage } from './fixtures.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from './setup.ts';

let h: Harness;
afterEach(async () => h?.close());

describe('request logging', () => {
  it('one JSON line per request, with mac and phase; refusals are warnings; signatures never logged', async () => {
    const { lines, logger } = capturedLog();
    h = await harness(baseYaml(), {}, { log: logger });
    const image = addImage(h.store, 'demo');
    const script = (await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body;
    const layer = /netboot\.layer=http:\/\/127\.0\.0\.1:8080(\S+)/.exec(script)![1]!;
    await h.app.inject(`/images/${image.id}/vmlinuz?mac=${MAC_HYP}`);
    await h.app.inject(layer);
    await h.app.inject(layer.replace(/sig=([0-9a-f])/, (_m, c: string) => `sig=${c === '0' ? '1' : '0'}`));
    await h.app.inject('/healthz');
    await new Promise((resolve) => setImmediate(resolve));

    expect(lines.map((l) => [l.level, l.mac, l.phase, l.status])).toEqual([
      [30, MAC, 'script', 200],
      [30, MAC, 'kernel', 200],
      [30, MAC, 'layer', 200],
      [40, MAC, 'layer', 403],
      [30, undefined, undefined, 200],
    ]);
    expect(lines[3]!.warning).toBe('signed layer refused: bad signature');
    expect(JSON.stringify(lines)).not.toMatch(/sig=[0-9a-f]{8}/);
  });
});
