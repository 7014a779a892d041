import { mkdtempSync, readFileSync, rmSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { eventToken, hostApiToken, LayerSigner, redactSignatures, verifyEventToken, MAX_DELIVERIES } from '../../server/layers/signing.ts';

const key = Buffer.alloc(32, 1);
const MAC = '52:54:00:12:34:56';
const query = (g: { boot: string; image: string; exp: number; sig: string }) => ({ boot: g.boot, image: g.image, exp: String(g.exp), sig: g.sig });

describe('LayerSigner', () => {
  it(`${MAX_DELIVERIES} deliveries per boot id (a download cut off on the wire is fetched again); broken-off ones do not count; concurrent fetches are refused`, () => {
    const signer = new LayerSigner(key, () => 1_000_000);
    const grant = query(signer.sign(MAC, 'b1', 'img', 60));
    const first = signer.redeem(MAC, grant);
    expect(first.ok).toBe(true);
    expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 409 });
    if (first.ok) first.release();
    for (let i = 0; i < MAX_DELIVERIES; i++) {
      const delivery = signer.redeem(MAC, grant);
      expect(delivery.ok).toBe(true);
      if (delivery.ok) expect(delivery.commit()).toBeNull();
    }
    expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 410, reason: `already delivered ${MAX_DELIVERIES} times for this boot` });
  });

  it('a ledger that cannot be written fails nothing: the delivery counts in memory and commit() returns the error', () => {
    const dir = mkdtempSync(join(tmpdir(), 'layer-ledger-'));
    try {
      const signer = new LayerSigner(key, () => 1_000_000, join(dir, 'used-layer-urls.jsonl'));
      rmSync(dir, { recursive: true, force: true }); // the state dir vanished mid-run
      const grant = query(signer.sign(MAC, 'b1', 'img', 60));
      for (let i = 0; i < MAX_DELIVERIES; i++) {
        const delivery = signer.redeem(MAC, grant);
        expect(delivery.ok).toBe(true);
        if (delivery.ok) expect(delivery.commit()?.message).toMatch(/ENOENT/);
      }
      expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 410 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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
        for (let i = 0; i < MAX_DELIVERIES; i++) {
          const r = first.redeem(MAC, grant);
          if (r.ok) r.commit();
        }
      }
      appendFileSync(ledger, '{"id":"torn'); // a crash mid-write
      const restarted = new LayerSigner(key, () => now, ledger);
      expect(restarted.redeem(MAC, shortLived)).toMatchObject({ ok: false, status: 410, reason: `already delivered ${MAX_DELIVERIES} times for this boot` });
      expect(restarted.redeem(MAC, longLived)).toMatchObject({ ok: false, status: 410 });
      now += 120_000;
      new LayerSigner(key, () => now, ledger);
      const lines = readFileSync(ledger, 'utf8').trim().split('\n');
      expect(lines).toHaveLength(MAX_DELIVERIES);
      expect(JSON.parse(lines[0]!)).toMatchObject({ id: `${MAC}\0b2` });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('LayerSigner.retire: /init is past its layer', () => {
  it('no delivery after the boot reported its layer, across a restart too; other boots are untouched', () => {
    const dir = mkdtempSync(join(tmpdir(), 'layer-ledger-'));
    try {
      const ledger = join(dir, 'used-layer-urls.jsonl');
      const now = 1_000_000;
      const signer = new LayerSigner(key, () => now, ledger);
      const delivered = query(signer.sign(MAC, 'b1', 'img', 900));
      const neverFetched = query(signer.sign(MAC, 'b2', 'img', 900));
      const other = query(signer.sign(MAC, 'b3', 'img', 900));
      const first = signer.redeem(MAC, delivered);
      if (first.ok) first.commit();
      expect(signer.retire(MAC, 'b1', 900)).toBeNull();
      expect(signer.retire(MAC, 'b2', 900)).toBeNull();
      expect(signer.retire(MAC, 'b1', 900)).toBeNull();
      for (const signers of [signer, new LayerSigner(key, () => now, ledger)]) {
        expect(signers.redeem(MAC, delivered)).toMatchObject({ ok: false, status: 410 });
        expect(signers.redeem(MAC, neverFetched)).toMatchObject({ ok: false, status: 410 });
      }
      expect(new LayerSigner(key, () => now, ledger).redeem(MAC, other).ok).toBe(true);
      expect(readFileSync(ledger, 'utf8').trim().split('\n')).toHaveLength(2 * MAX_DELIVERIES);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('event tokens', () => {
  it('name their boot, verify for their MAC and key only, and are not layer signatures', () => {
    const token = eventToken(key, MAC, '0123456789abcdef');
    expect(token).toMatch(/^0123456789abcdef\.[0-9a-f]{64}$/);
    expect(verifyEventToken(key, MAC, token)).toBe('0123456789abcdef');
    expect(verifyEventToken(key, '52:54:00:12:34:57', token)).toBeNull();
    expect(verifyEventToken(Buffer.alloc(32, 2), MAC, token)).toBeNull();
    const [, mac] = token.split('.');
    expect(verifyEventToken(key, MAC, `0123456789abcdee.${mac}`)).toBeNull();
    for (const bad of ['', '.', 'x.y', `${token}0`, `${token} `, `0123456789abcdef.${mac!.toUpperCase()}`, `../${token}`]) {
      expect(verifyEventToken(key, MAC, bad), bad).toBeNull();
    }
    // Domain separation: the layer URL's signature for the same MAC and boot is no event token.
    const grant = new LayerSigner(key, () => 1_000_000).sign(MAC, '0123456789abcdef', 'img', 60);
    expect(verifyEventToken(key, MAC, `0123456789abcdef.${grant.sig}`)).toBeNull();
    expect(hostApiToken(key)).toMatch(/^[0-9a-f]{64}$/);
    expect(hostApiToken(key)).not.toBe(hostApiToken(Buffer.alloc(32, 2)));
  });

  it('redactSignatures hides every sig= value and nothing else', () => {
    expect(redactSignatures('GET /machines/x/layer?boot=b&image=i&exp=1&sig=abcdef012 and ?sig=zz&a=1')).toBe('GET /machines/x/layer?boot=b&image=i&exp=1&sig=… and ?sig=…&a=1');
    expect(redactSignatures('/images/x/rootfs.squashfs?mac=52-54-00-12-34-56')).toBe('/images/x/rootfs.squashfs?mac=52-54-00-12-34-56');
  });
});
