import { mkdtempSync, readFileSync, rmSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LayerSigner } from '../../server/layers/signing.ts';

const key = Buffer.alloc(32, 1);
const MAC = '52:54:00:12:34:56';
const query = (g: { boot: string; image: string; exp: number; sig: string }) => ({ boot: g.boot, image: g.image, exp: String(g.exp), sig: g.sig });

describe('LayerSigner', () => {
  it('one delivery per boot id; a broken-off delivery can be retried; concurrent fetches are refused', () => {
    const signer = new LayerSigner(key, () => 1_000_000);
    const grant = query(signer.sign(MAC, 'b1', 'img', 60));
    const first = signer.redeem(MAC, grant);
    expect(first.ok).toBe(true);
    expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 409 });
    if (first.ok) first.release();
    const retry = signer.redeem(MAC, grant);
    expect(retry.ok).toBe(true);
    if (retry.ok) retry.commit();
    expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 410 });
  });

  it('refuses other MACs, other images, changed expiry, other keys, malformed parameters, expired grants', () => {
    let now = 1_000_000;
    const signer = new LayerSigner(key, () => now);
    const grant = query(signer.sign(MAC, 'b1', 'img', 60));
    expect(signer.redeem('52:54:00:12:34:57', grant)).toMatchObject({ ok: false, status: 403 });
    expect(signer.redeem(MAC, { ...grant, image: 'other' })).toMatchObject({ ok: false, status: 403 });
    expect(signer.redeem(MAC, { ...grant, exp: String(Number(grant.exp) + 1) })).toMatchObject({ ok: false, status: 403 });
    expect(new LayerSigner(Buffer.alloc(32, 2), () => now).redeem(MAC, grant)).toMatchObject({ ok: false, status: 403 });
    expect(signer.redeem(MAC, { ...grant, sig: 'zz' })).toMatchObject({ ok: false, status: 403 });
    expect(signer.redeem(MAC, { boot: 'b1' })).toMatchObject({ ok: false, status: 403 });
    now += 61_000;
    expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 410, reason: 'signature expired' });
  });

  it('remembers used boot ids across a restart (ledger in the state dir) and forgets them once expired', () => {
    const dir = mkdtempSync(join(tmpdir(), 'layer-ledger-'));
    try {
      const ledger = join(dir, 'used-layer-urls.jsonl');
      let now = 1_000_000;
      const first = new LayerSigner(key, () => now, ledger);
      const shortLived = query(first.sign(MAC, 'b1', 'img', 60));
      const longLived = query(first.sign(MAC, 'b2', 'img', 600));
      for (const grant of [shortLived, longLived]) {
        const r = first.redeem(MAC, grant);
        if (r.ok) r.commit();
      }
      appendFileSync(ledger, '{"id":"torn'); // a crash mid-write
      const restarted = new LayerSigner(key, () => now, ledger);
      expect(restarted.redeem(MAC, shortLived)).toMatchObject({ ok: false, status: 410, reason: 'already fetched once for this boot' });
      expect(restarted.redeem(MAC, longLived)).toMatchObject({ ok: false, status: 410 });
      now += 120_000;
      new LayerSigner(key, () => now, ledger);
      const lines = readFileSync(ledger, 'utf8').trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(JSON.parse(lines[0]!)).toMatchObject({ id: `${MAC}\0b2` });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
