import { describe, expect, it } from 'vitest';
import { DECODE_LIMITS, decodeMessage, encodeMessage, MessageType, Opt, ipOption, textOption, type DecodeStats } from '../../server/dhcp/codec.ts';
import { LeaseStore } from '../../server/dhcp/leases.ts';
import { respond } from '../../server/dhcp/responder.ts';
import { fixture, fuzzPackets, makeConfig, request } from './helpers.ts';

/**
 * Codec and responder without sockets: thousands of random and mutated packets. Nothing may
 * throw; whatever decodes is answered (or not) and every reply encodes and decodes again.
 */
describe('fuzz: codec and responder', () => {
  const seeds = ['ovmf-pxe-discover.bin', 'ovmf-http-discover.bin', 'ipxe-bios-discover.bin'].map(fixture);
  seeds.push(
    encodeMessage(request(MessageType.REQUEST, '52:54:00:00:d0:02', [ipOption(Opt.SERVER_ID, '10.9.0.1'), ipOption(Opt.REQUESTED_IP, '10.9.0.100')])),
    encodeMessage(request(MessageType.DECLINE, '52:54:00:00:d0:02', [ipOption(Opt.SERVER_ID, '10.9.0.1'), ipOption(Opt.REQUESTED_IP, '10.9.0.100')])),
    encodeMessage(request(MessageType.INFORM, '52:54:00:00:d0:02', [textOption(Opt.VENDOR_CLASS, 'PXEClient')], { ciaddr: '10.9.0.5' })),
  );
  const packets = fuzzPackets(seeds, 20_000, 0x5eed1234);

  const configs = ['proxy', 'full'].map((mode) =>
    makeConfig({
      server: { address: '10.9.0.1', dhcp: { mode, pool: { start: '10.9.0.100', end: '10.9.0.120' } } },
      machines: { '52:54:00:00:d0:02': { ip: '10.9.0.20' }, '52:54:00:00:d0:01': {} },
      defaults: { unknown: 'boot-default' },
    }),
  );

  it('decodes 20 000 packets without a throw; each failure is a typed error', () => {
    const reasons = new Map<string, number>();
    let ok = 0;
    for (const p of packets) {
      const r = decodeMessage(p);
      if (r.ok) ok++;
      else reasons.set(r.error.reason, (reasons.get(r.error.reason) ?? 0) + 1);
    }
    // The corpus exercises both sides and the interesting error kinds.
    expect(ok).toBeGreaterThan(1000);
    for (const reason of ['too-short', 'bad-magic', 'option-overrun', 'bad-overload']) expect(reasons.get(reason) ?? 0).toBeGreaterThan(0);
  });

  it('answers every decodable packet in proxy and full mode without a throw; replies round-trip', async () => {
    let replies = 0;
    for (const config of configs) {
      const leases = await LeaseStore.open(null);
      for (const p of packets) {
        const r = decodeMessage(p);
        if (!r.ok) continue;
        for (const port of [67, 4011]) {
          const outcome = respond(r.message, { config, port, from: { address: '10.9.0.5', port: 68 }, leases });
          if (!outcome.reply) continue;
          replies++;
          const again = decodeMessage(encodeMessage(outcome.reply.message));
          expect(again.ok).toBe(true);
        }
      }
    }
    expect(replies).toBeGreaterThan(100);
  });

  it('hostile sizes: no packet reads more than the option limit, however it is built', () => {
    // Option-packed packets of every length up to 64 KiB, with and without overload.
    let worst = 0;
    for (let length = 240; length <= 65_507; length += 977) {
      for (const overload of [0, 3]) {
        const p = Buffer.alloc(length).fill(Buffer.from([250, 0]));
        seeds[0]!.copy(p, 0, 0, 240);
        if (length >= 243 && overload) Buffer.from([52, 1, overload]).copy(p, 240);
        const stats: DecodeStats = { optionsRead: 0, areasRead: 0 };
        const r = decodeMessage(p, stats);
        if (length > DECODE_LIMITS.maxMessageBytes) expect(r).toMatchObject({ ok: false, error: { reason: 'too-long' } });
        worst = Math.max(worst, stats.optionsRead);
      }
    }
    expect(worst).toBe(DECODE_LIMITS.maxOptions);
  });
});
