import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dirSource } from '../../server/tftp/files.ts';
import { TftpServer, type TransferEvent } from '../../server/tftp/server.ts';
import { RawPeer, runClient, sha256, sha256File } from './helpers.ts';

// One host flooding RRQs from many source ports must not lock the other hosts out.
// 127.0.0.2 and 127.0.0.3 are loopback addresses too: they stand in for other machines.

let dir: string;
let server: TftpServer;
let port: number;
const content = randomBytes(50_000);
const events: TransferEvent[] = [];
let onEvent: (() => void) | undefined;

/** Resolves once `predicate` holds for the transfer events seen so far (checked at each event). */
function eventsWhere(predicate: (events: TransferEvent[]) => boolean): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (!predicate(events)) return;
      onEvent = undefined;
      resolve();
    };
    onEvent = check;
    check();
  });
}
const rrq = { op: 'RRQ' as const, filename: 'f.bin', mode: 'octet', options: [] };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tftp-cap-'));
  await writeFile(join(dir, 'f.bin'), content);
  server = new TftpServer({
    host: '127.0.0.1',
    port: 0,
    source: dirSource(dir),
    maxTransfers: 16,
    maxTransfersPerAddress: 4,
    // Long enough that the flood's transfers are all still open while the others are served.
    limits: { timeoutMs: 2000, maxTimeoutMs: 8000, maxRetries: 6 },
    onTransfer: (e) => {
      events.push(e);
      onEvent?.();
    },
  });
  port = (await server.start()).port;
});

afterAll(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('per-address transfer cap', () => {
  it('64 never-acknowledged RRQs from one host take 4 slots; the rest get an ERROR; other hosts are served', async () => {
    const flood = await Promise.all(Array.from({ length: 64 }, () => RawPeer.open('127.0.0.1')));
    try {
      for (const peer of flood) await peer.send(rrq, port);
      const answers = await Promise.all(flood.map((peer) => peer.next()));
      const data = answers.filter((a) => a?.packet.op === 'DATA');
      const errors = answers.filter((a) => a?.packet.op === 'ERROR');
      expect(data).toHaveLength(4);
      expect(errors).toHaveLength(60);
      for (const e of errors) expect(e!.packet.op === 'ERROR' && e!.packet.message).toMatch(/too many transfers from 127\.0\.0\.1.*per-address limit/i);
      expect(server.transfersFrom('127.0.0.1')).toBe(4);
      expect(server.activeTransfers).toBe(4);

      // Another host, with a real client, while the flood still holds its 4 slots.
      const file = join(dir, 'out-2');
      const curl = await runClient('curl', ['-sS', '-m', '30', '--interface', '127.0.0.2', '-o', file, `tftp://127.0.0.1:${port}/f.bin`]);
      expect(curl.stderr).toBe('');
      expect(await sha256File(file)).toBe(sha256(content));
      // And a third one by hand: it gets DATA, not an ERROR.
      const other = await RawPeer.open('127.0.0.3');
      try {
        await other.send(rrq, port);
        const first = await other.next();
        expect(first?.packet).toMatchObject({ op: 'DATA', block: 1 });
        await other.send({ op: 'ERROR', code: 0, message: 'enough' }, first!.from.port);
      } finally {
        other.close();
      }
      expect(server.transfersFrom('127.0.0.1')).toBe(4);

      // The flooder's transfers end (here: it says so); its slots come back.
      const ended = eventsWhere((es) => es.filter((e) => e.client.address === '127.0.0.1' && e.outcome === 'client-error').length === 4);
      for (const a of data) await flood[answers.indexOf(a)]!.send({ op: 'ERROR', code: 0, message: 'bye' }, a!.from.port);
      await ended;
      expect(server.transfersFrom('127.0.0.1')).toBe(0);
      const again = join(dir, 'out-1');
      await runClient('curl', ['-sS', '-m', '30', '-o', again, `tftp://127.0.0.1:${port}/f.bin`]);
      expect(await sha256File(again)).toBe(sha256(content));
      expect(server.transfersFrom('127.0.0.1')).toBe(0);
    } finally {
      for (const p of flood) p.close();
    }
  });
});
