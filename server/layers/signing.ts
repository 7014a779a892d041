import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { appendDurableSync, writeFileAtomicSync } from '../fs/atomic-write.ts';

/**
 * Signed, expiring URLs for the full layer (the one with secrets and host keys), good for a
 * few deliveries per boot. The signature binds MAC, boot id, image id and expiry. While a
 * fetch is in flight, others are refused; a fetch that breaks off releases it, and one that
 * completed on our side may still have been cut off on the wire (the data sat in the send
 * buffer), so /init may fetch the same boot's layer again, up to MAX_DELIVERIES times, until
 * it reports its layer (retire). Only
 * the machine itself gets that far (the route checks its identity first). Deliveries are kept
 * until they expire, in memory and (given a ledger path in the state dir) in an append-only,
 * fsynced file read back at start-up, so a server restart does not reset them.
 */

export interface LayerGrant {
  boot: string;
  image: string;
  exp: number;
  sig: string;
}

/** Complete deliveries of one boot's layer: the first, and retries after a download cut off on the wire. */
export const MAX_DELIVERIES = 3;

export interface Redemption {
  grant: LayerGrant;
  /** The layer was delivered: counts one delivery. Returns the error when the ledger could not be written (the count stays in memory). */
  commit(): Error | null;
  /** The delivery broke off: the boot id may be fetched again. */
  release(): void;
}

export type VerifyResult = ({ ok: true } & Redemption) | { ok: false; status: 403 | 409 | 410; reason: string };

export class LayerSigner {
  readonly #key: Buffer;
  readonly #now: () => number;
  /** id -> expiry (s) and complete deliveries so far */
  readonly #delivered = new Map<string, { exp: number; count: number }>();
  readonly #inFlight = new Set<string>();

  readonly #ledger: string | undefined;

  constructor(key: Buffer, now: () => number = Date.now, ledgerPath?: string) {
    this.#key = createHmac('sha256', key).update('layer-url').digest();
    this.#now = now;
    this.#ledger = ledgerPath;
    if (ledgerPath) this.#loadLedger(ledgerPath);
  }

  /** Reads the used ids that have not expired and rewrites the file with only those. */
  #loadLedger(path: string): void {
    let text = '';
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const nowSeconds = Math.floor(this.#now() / 1000);
    for (const line of text.split('\n')) {
      try {
        const entry = JSON.parse(line) as { id?: unknown; exp?: unknown };
        if (typeof entry.id === 'string' && typeof entry.exp === 'number' && entry.exp >= nowSeconds) this.#countDelivery(entry.id, entry.exp);
      } catch {
        /* an empty or torn last line */
      }
    }
    const kept = [...this.#delivered].flatMap(([id, { exp, count }]) => Array<string>(count).fill(`${JSON.stringify({ id, exp })}\n`)).join('');
    try {
      writeFileAtomicSync(path, kept, 0o600);
    } catch {
      // A full or read-only disk must not keep the server from starting: the file keeps its
      // expired lines, and each delivery's append reports its own failure.
    }
  }

  #countDelivery(id: string, exp: number): void {
    const seen = this.#delivered.get(id);
    this.#delivered.set(id, { exp, count: (seen?.count ?? 0) + 1 });
  }

  sign(mac: string, boot: string, image: string, ttlSeconds: number): LayerGrant {
    const exp = Math.floor(this.#now() / 1000) + ttlSeconds;
    return { boot, image, exp, sig: this.#mac(mac, boot, image, exp) };
  }

  /** Checks a grant from a query string and consumes its boot id. */
  redeem(mac: string, query: Record<string, unknown>): VerifyResult {
    const { boot, image, exp, sig } = query;
    if (typeof boot !== 'string' || typeof sig !== 'string' || typeof exp !== 'string' || typeof image !== 'string' || !/^\d{1,12}$/.test(exp)) {
      return { ok: false, status: 403, reason: 'malformed signature parameters' };
    }
    const expected = Buffer.from(this.#mac(mac, boot, image, Number(exp)), 'hex');
    const given = Buffer.from(sig, 'hex');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, status: 403, reason: 'bad signature' };
    const nowSeconds = Math.floor(this.#now() / 1000);
    if (Number(exp) < nowSeconds) return { ok: false, status: 410, reason: 'signature expired' };
    this.#prune(nowSeconds);
    const id = `${mac}\0${boot}`;
    const deliveries = this.#delivered.get(id)?.count ?? 0;
    if (deliveries >= MAX_DELIVERIES) return { ok: false, status: 410, reason: `already delivered ${deliveries} times for this boot` };
    if (this.#inFlight.has(id)) return { ok: false, status: 409, reason: 'another fetch for this boot is in progress' };
    this.#inFlight.add(id);
    let settled = false;
    return {
      ok: true,
      grant: { boot, image, exp: Number(exp), sig },
      commit: () => {
        if (settled) return null;
        settled = true;
        this.#inFlight.delete(id);
        this.#countDelivery(id, Number(exp));
        if (!this.#ledger) return null;
        try {
          appendDurableSync(this.#ledger, `${JSON.stringify({ id, exp: Number(exp) })}\n`, 0o600);
          return null;
        } catch (err) {
          return err as Error;
        }
      },
      release: () => {
        if (settled) return;
        settled = true;
        this.#inFlight.delete(id);
      },
    };
  }

  /**
   * The boot is past its layer (/init reported it): no further delivery for it, even before it
   * expires, so a local user of the booted machine who reads the URL in /proc/cmdline cannot
   * fetch the secrets again. `ttlSeconds` bounds the expiry of any grant of that boot. Returns
   * the error when the ledger could not be written (the retirement stays in memory).
   */
  retire(mac: string, boot: string, ttlSeconds: number): Error | null {
    const id = `${mac}\0${boot}`;
    const seen = this.#delivered.get(id);
    const missing = MAX_DELIVERIES - (seen?.count ?? 0);
    if (missing <= 0) return null;
    const exp = seen?.exp ?? Math.floor(this.#now() / 1000) + ttlSeconds;
    this.#delivered.set(id, { exp, count: MAX_DELIVERIES });
    if (!this.#ledger) return null;
    try {
      appendDurableSync(this.#ledger, `${JSON.stringify({ id, exp })}\n`.repeat(missing), 0o600);
      return null;
    } catch (err) {
      return err as Error;
    }
  }

  #mac(mac: string, boot: string, image: string, exp: number): string {
    return createHmac('sha256', this.#key).update(`${mac}\0${boot}\0${image}\0${exp}`).digest('hex');
  }

  #prune(nowSeconds: number): void {
    for (const [id, { exp }] of this.#delivered) if (exp < nowSeconds) this.#delivered.delete(id);
  }
}

/**
 * Per-boot event token, `<bootId>.<hmac hex>`, handed to /init as `netboot.token=` next to the
 * signed layer URL: /init sends it with each event (`Authorization: Bearer`). Self-contained,
 * so the server checks it without state; the HMAC key is derived from the install key with its
 * own label, so a token can never pass for a layer signature or the other way round.
 */
export function eventToken(installKey: Buffer, mac: string, bootId: string): string {
  return `${bootId}.${eventMac(installKey, mac, bootId)}`;
}

/** The boot id an event token was issued for, or null when it is not a token for this MAC. */
export function verifyEventToken(installKey: Buffer, mac: string, token: string): string | null {
  const match = /^([0-9a-f]{1,64})\.([0-9a-f]{64})$/.exec(token);
  if (!match) return null;
  const expected = Buffer.from(eventMac(installKey, mac, match[1]!), 'hex');
  return timingSafeEqual(Buffer.from(match[2]!, 'hex'), expected) ? match[1]! : null;
}

function eventMac(installKey: Buffer, mac: string, bootId: string): string {
  const key = createHmac('sha256', installKey).update('boot-event-token').digest();
  return createHmac('sha256', key).update(`${mac}\0${bootId}`).digest('hex');
}

/**
 * A read-only API token for tools on the server's own host (`netboot gc`, the lab): derived from
 * the install key, so whoever can read the state dir has it and no one else does, and no config
 * is needed for them. Whoever reads the install key could sign layer URLs anyway.
 */
export function hostApiToken(installKey: Buffer): string {
  return createHmac('sha256', installKey).update('api-host-read-token').digest('hex');
}

/** The host token of the install whose state dir this is; null before a server created the key. */
export function readHostApiToken(stateDir: string): string | null {
  try {
    // The install key file of server/layers/machine-state.ts (loadInstallKey).
    const key = readFileSync(`${stateDir}/netboot.key`);
    return key.length >= 32 ? hostApiToken(key) : null;
  } catch {
    return null;
  }
}

/** Replaces the value of every `sig=` query parameter (a signed layer URL's signature) in a text. */
export function redactSignatures(text: string): string {
  return text.replace(/([?&;]sig=)[^&\s"'#]+/gi, '$1…');
}
