/**
 * `netboot gc` asks the running server which ids machines read over NBD right now and keeps them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { idsStreamedByServer } from '../../server/app/ids-in-use.ts';
import type { Config } from '../../server/config/types.ts';
import { addImage } from '../http/fixtures.ts';
import { harness, type Harness } from '../http/setup.ts';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

function pointingAt(config: Config, port: number): Config {
  return { ...config, server: { ...config.server, address: '127.0.0.1', httpPort: port } };
}

describe('idsStreamedByServer', () => {
  it("names the ids with NBD clients, from a running server's /api/images", async () => {
    let clients = 0;
    h = await harness(undefined, {}, { nbdClients: () => clients });
    const image = addImage(h.store, 'demo');
    await h.app.listen({ host: '127.0.0.1', port: 0 });
    const port = (h.app.server.address() as { port: number }).port;
    expect(await idsStreamedByServer(pointingAt(h.config, port))).toEqual(new Set());
    clients = 1;
    expect(await idsStreamedByServer(pointingAt(h.config, port))).toEqual(new Set([image.id]));
  });

  it('is null when no server answers', async () => {
    h = await harness();
    expect(await idsStreamedByServer(pointingAt(h.config, 1), 500)).toBeNull();
  });
});
