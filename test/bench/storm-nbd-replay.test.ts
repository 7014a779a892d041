import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { nbdReplay } from '../../bench/lib/storm-protocols.ts';
import { startServer, type ServerFixture } from '../nbd/helpers.ts';

/**
 * A front for our NBD server whose first `silent` connections are accepted and never answered,
 * as a storm-overloaded nbd-server's lost connections look to the client; the rest are passed through.
 */
async function front(port: number, silent: number): Promise<{ server: Server; port: number; accepted: () => number; close: () => Promise<void> }> {
  const sockets: Socket[] = [];
  let accepted = 0;
  const server = createServer((socket) => {
    sockets.push(socket);
    if (accepted++ < silent) return;
    const upstream = connect({ host: '127.0.0.1', port });
    sockets.push(upstream);
    socket.pipe(upstream).pipe(socket);
    socket.on('error', () => upstream.destroy());
    upstream.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    accepted: () => accepted,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

let fixture: ServerFixture | null = null;
let proxy: Awaited<ReturnType<typeof front>> | null = null;
afterEach(async () => {
  await proxy?.close();
  await fixture?.close();
  proxy = fixture = null;
});

describe('bench/storm: the NBD root replay', () => {
  it('gives up on a connection that is never greeted and retries, as netboot-nbd and /init do', async () => {
    fixture = await startServer({ 'image-a': 1 << 20 });
    proxy = await front(fixture.port, 1);
    const counters = { waits: 0, waitMs: 0, retries: 0 };
    const reads: [number, number, number][] = [
      [0, 4096, 0],
      [65536, 131072, 0],
      [4096, 512, 1],
    ];
    const bytes = await nbdReplay('127.0.0.1', proxy.port, '127.0.0.1', 'image-a', reads, counters, { handshakeLimitMs: 300 });
    expect(bytes).toBe(4096 + 131072 + 512);
    expect(counters.retries).toBe(1);
    // The silent one, its retry, and the trace's second connection.
    expect(proxy.accepted()).toBe(3);
  });

  it('names the silent wait once every attempt has gone unanswered', async () => {
    fixture = await startServer({ 'image-a': 1 << 20 });
    proxy = await front(fixture.port, 1);
    const counters = { waits: 0, waitMs: 0, retries: 0 };
    // One attempt left: the same error netboot-nbd reports, in the fleet's words.
    await expect(nbdReplay('127.0.0.1', proxy.port, '127.0.0.1', 'image-a', [[0, 4096, 0]], counters, { handshakeLimitMs: 200, attempts: 1 })).rejects.toThrow(
      /NBD: no answer within 0\.2 s/,
    );
    expect(counters.retries).toBe(0);
  });
});
