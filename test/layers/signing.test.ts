import { mkdtempSync, readFileSync, rmSync, appendFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { eventToken, hostApiToken, LayerSigner, redactSignatures, verifyEventToken, MAX_DELIVERIES } from '../../server/layers/signing.ts';

const key = Buffer.alloc(32, 1);
const MAC = '52:54:00:12:34:56';
const query = (g: { boot: string; image: string; exp: number; sig: string }) => ({ boot: g.boot, image: g.image, exp: String(g.exp), sig: g.sig });

describe('LayerSigner', () => {
  it(`${MAX_DELIVERIES} deliveries per boot id (a download cut off on the wire is fetched again); broken-off ones do not count; concurrent fetches are refused`, async () => {
    const signer = new LayerSigner(key, () => 1_000_000);
    const grant = query(signer.sign(MAC, 'b1', 'img', 60));
    const first = signer.redeem(MAC, grant);
    expect(first.ok).toBe(true);
    expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 409 });
    if (first.ok) first.release();
    // Broken off after its count: counted, then taken back.
    const cut = signer.redeem(MAC, grant);
    if (cut.ok) {
      expect(await cut.commit()).toBeNull();
      cut.release();
    }
    for (let i = 0; i < MAX_DELIVERIES; i++) {
      const delivery = signer.redeem(MAC, grant);
      expect(delivery.ok).toBe(true);
      if (delivery.ok) {
        expect(await delivery.commit()).toBeNull();
        delivery.delivered();
      }
    }
    expect(signer.redeem(MAC, grant)).toMatchObject({ ok: false, status: 410, reason: `already delivered ${MAX_DELIVERIES} times for this boot` });
  });

  it('a ledger that cannot be written fails nothing: the delivery counts in memory and commit() returns the error', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'layer-ledger-'));
    try {
      const signer = new LayerSigner(key, () => 1_000_000, join(dir, 'used-layer-urls.jsonl'));
      rmSync(dir, { recursive: true, force: true }); // the state dir vanished mid-run
      const grant = query(signer.sign(MAC, 'b1', 'img', 60));
      for (let i = 0; i < MAX_DELIVERIES; i++) {
        const delivery = signer.redeem(MAC, grant);
        expect(delivery.ok).toBe(true);
        if (delivery.ok) {
          expect((await delivery.commit())?.message).toMatch(/ENOENT/);
          delivery.delivered();
        }
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

  it('remembers used boot ids across a restart (ledger in the state dir) and forgets them once expired', async () => {
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
          if (r.ok) {
            await r.commit();
            r.delivered();
          }
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
  it('no delivery after the boot reported its layer, across a restart too; other boots are untouched', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'layer-ledger-'));
    try {
      const ledger = join(dir, 'used-layer-urls.jsonl');
      const now = 1_000_000;
      const signer = new LayerSigner(key, () => now, ledger);
      const delivered = query(signer.sign(MAC, 'b1', 'img', 900));
      const neverFetched = query(signer.sign(MAC, 'b2', 'img', 900));
      const other = query(signer.sign(MAC, 'b3', 'img', 900));
      const first = signer.redeem(MAC, delivered);
      if (first.ok) {
        await first.commit();
        first.delivered();
      }
      expect(await signer.retire(MAC, 'b1', 900)).toBeNull();
      expect(await signer.retire(MAC, 'b2', 900)).toBeNull();
      expect(await signer.retire(MAC, 'b1', 900)).toBeNull();
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

describe('LayerSigner ledger: group commit', () => {
  const withLedger = async (body: (ledger: string) => Promise<void>) => {
    const dir = mkdtempSync(join(tmpdir(), 'layer-ledger-'));
    try {
      await body(join(dir, 'used-layer-urls.jsonl'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  it('concurrent deliveries share one fsync; once their commits resolved, a restart refuses the replay', () =>
    withLedger(async (ledger) => {
      const signer = new LayerSigner(key, () => 1_000_000, ledger);
      const grants = Array.from({ length: 40 }, (_, i) => query(signer.sign(MAC, `boot${i}`, 'img', 600)));
      const commits: Promise<Error | null>[] = [];
      // Each boot's deliveries one after the other (one in flight per boot), all boots at once, nothing awaited in between.
      for (let round = 0; round < MAX_DELIVERIES; round++) {
        for (const grant of grants) {
          const delivery = signer.redeem(MAC, grant);
          if (!delivery.ok) throw new Error(`refused: ${delivery.reason}`);
          commits.push(delivery.commit());
          delivery.delivered();
        }
      }
      expect(await Promise.all(commits)).toEqual(commits.map(() => null));
      expect(signer.ledgerFsyncs).toBe(1);
      const restarted = new LayerSigner(key, () => 1_000_000, ledger);
      for (const grant of grants) expect(restarted.redeem(MAC, grant)).toMatchObject({ ok: false, status: 410 });
    }));

  it('a delivery that broke off after its count is taken back, across a restart too; a retired boot stays refused', () =>
    withLedger(async (ledger) => {
      const signer = new LayerSigner(key, () => 1_000_000, ledger);
      const cutOff = query(signer.sign(MAC, 'b1', 'img', 600));
      const retired = query(signer.sign(MAC, 'b2', 'img', 600));
      const cut = signer.redeem(MAC, cutOff);
      const inFlight = signer.redeem(MAC, retired);
      if (!cut.ok || !inFlight.ok) throw new Error('refused');
      expect(await cut.commit()).toBeNull();
      cut.release();
      expect(await inFlight.commit()).toBeNull();
      expect(await signer.retire(MAC, 'b2', 600)).toBeNull(); // /init reported while this fetch was still open
      inFlight.release();
      // Written after the undo line (appends keep their order): once durable, so is the undo.
      const last = signer.redeem(MAC, query(signer.sign(MAC, 'b3', 'img', 600)));
      if (last.ok) expect(await last.commit()).toBeNull();
      const restarted = new LayerSigner(key, () => 1_000_000, ledger);
      for (const s of [signer, restarted]) expect(s.redeem(MAC, retired)).toMatchObject({ ok: false, status: 410 });
      for (let i = 0; i < MAX_DELIVERIES; i++) {
        const again = restarted.redeem(MAC, cutOff);
        if (!again.ok) throw new Error(`delivery ${i + 1} refused: ${again.reason}`);
        expect(await again.commit()).toBeNull();
        again.delivered();
      }
      expect(restarted.redeem(MAC, cutOff)).toMatchObject({ ok: false, status: 410 });
    }));

  it('a write error reaches the caller of commit() and of retire() (the state dir replaced by a file)', () =>
    withLedger(async (ledger) => {
      const signer = new LayerSigner(key, () => 1_000_000, ledger);
      const dir = dirname(ledger);
      rmSync(dir, { recursive: true });
      writeFileSync(dir, 'not a directory');
      try {
        const delivery = signer.redeem(MAC, query(signer.sign(MAC, 'b1', 'img', 600)));
        if (!delivery.ok) throw new Error('refused');
        expect((await delivery.commit())?.message).toMatch(/ENOTDIR/);
        expect((await signer.retire(MAC, 'b2', 600))?.message).toMatch(/ENOTDIR/);
      } finally {
        rmSync(dir, { force: true });
      }
    }));
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
