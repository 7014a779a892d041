import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { GroupCommitLog, writeFileAtomicSync } from '../fs/atomic-write.ts';

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
 *
 * What is durable when: a delivery is counted in the ledger BEFORE the first byte of the layer
 * goes out (the route awaits `commit()`), so no crash can forget a delivery that may have
 * reached someone. A delivery that then breaks off is un-counted, in memory at once and in the
 * ledger by an undo line written after its count: losing that line in a crash only costs the
 * machine one of its retries, never grants an extra one. Ledger lines: `{id, exp}` counts one
 * delivery, `{id, exp, undo: true}` takes one back. Writes are grouped (GroupCommitLog): the
 * deliveries of a boot storm share fsyncs, run off the event loop, and wait for at most the
 * fsync in flight plus their own.
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
  /**
   * Counts the delivery about to be sent; resolves once the count is on disk: await it before the
   * first byte goes out. Resolves to the error when the ledger could not be written (the count
   * stays in memory, the caller decides; the route logs it and serves).
   */
  commit(): Promise<Error | null>;
  /** The response is complete on our side: the delivery stays counted. */
  delivered(): void;
  /** The delivery broke off (or never started): it does not count, the boot id may be fetched again. */
  release(): void;
}

/**
 * The ledger's queue bound. Only a valid grant can cause a write (a signature we issued, the
 * machine's identity, at most one delivery in flight per boot id), so what waits for the disk is
 * bounded by the booting machines already; the bound is a backstop for a stalled disk: past it,
 * commit() reports an error at once instead of queueing (some 15000 lines of about 70 bytes).
 */
const LEDGER_MAX_QUEUED_BYTES = 1 << 20;

export type VerifyResult = ({ ok: true } & Redemption) | { ok: false; status: 403 | 409 | 410; reason: string };

export class LayerSigner {
  readonly #key: Buffer;
  readonly #now: () => number;
  /** id -> expiry (s), deliveries counted so far, and whether the boot is past its layer (retire) */
  readonly #delivered = new Map<string, { exp: number; count: number; retired?: boolean }>();
  readonly #inFlight = new Set<string>();

  readonly #ledger: GroupCommitLog | undefined;

  constructor(key: Buffer, now: () => number = Date.now, ledgerPath?: string) {
    this.#key = createHmac('sha256', key).update('layer-url').digest();
    this.#now = now;
    if (ledgerPath) {
      // Once, at start-up: the sync read and rewrite happen before the first request.
      this.#loadLedger(ledgerPath);
      this.#ledger = new GroupCommitLog(ledgerPath, { mode: 0o600, maxQueuedBytes: LEDGER_MAX_QUEUED_BYTES });
    }
  }

  /** fsyncs of the ledger so far (grouped: many deliveries share one). */
  get ledgerFsyncs(): number {
    return this.#ledger?.fsyncs ?? 0;
  }

  /** Appends to the ledger; resolves when durable, to the error when that failed. */
  #record(lines: string): Promise<Error | null> {
    if (!this.#ledger) return Promise.resolve(null);
    return this.#ledger.append(lines).then(
      () => null,
      (err: Error) => err,
    );
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
        const entry = JSON.parse(line) as { id?: unknown; exp?: unknown; undo?: unknown };
        if (typeof entry.id !== 'string' || typeof entry.exp !== 'number' || entry.exp < nowSeconds) continue;
        if (entry.undo === true) this.#uncountDelivery(entry.id);
        else this.#countDelivery(entry.id, entry.exp);
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

  /** A counted delivery broke off. Never after retire: a retired boot stays refused. */
  #uncountDelivery(id: string): boolean {
    const seen = this.#delivered.get(id);
    if (!seen || seen.retired || seen.count === 0) return false;
    seen.count--;
    return true;
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
    let committed: Promise<Error | null> | null = null;
    return {
      ok: true,
      grant: { boot, image, exp: Number(exp), sig },
      commit: () => {
        if (settled) return Promise.resolve(null);
        if (!committed) {
          this.#countDelivery(id, Number(exp));
          committed = this.#record(`${JSON.stringify({ id, exp: Number(exp) })}\n`);
        }
        return committed;
      },
      delivered: () => {
        if (settled) return;
        settled = true;
        this.#inFlight.delete(id);
      },
      release: () => {
        if (settled) return;
        settled = true;
        this.#inFlight.delete(id);
        if (!committed || !this.#uncountDelivery(id)) return;
        // After its count reached the file (never before: a lone undo would grant an extra delivery at the next
        // start). A lost undo only keeps the count one higher. A failed count needs none.
        void committed.then((err) => (err ? null : this.#record(`${JSON.stringify({ id, exp: Number(exp), undo: true })}\n`)));
      },
    };
  }

  /**
   * The boot is past its layer (/init reported it): no further delivery for it, even before it
   * expires, so a local user of the booted machine who reads the URL in /proc/cmdline cannot
   * fetch the secrets again. `ttlSeconds` bounds the expiry of any grant of that boot. Resolves
   * once that is durable, to the error when the ledger could not be written (the retirement
   * stays in memory).
   */
  retire(mac: string, boot: string, ttlSeconds: number): Promise<Error | null> {
    const id = `${mac}\0${boot}`;
    const seen = this.#delivered.get(id);
    const missing = MAX_DELIVERIES - (seen?.count ?? 0);
    const exp = seen?.exp ?? Math.floor(this.#now() / 1000) + ttlSeconds;
    // Retired even when fully counted: a delivery in flight that breaks off now must not free a retry.
    this.#delivered.set(id, { exp, count: Math.max(MAX_DELIVERIES, seen?.count ?? 0), retired: true });
    if (missing <= 0) return Promise.resolve(null);
    // Plain lines, as many as the count lacks: every change in memory appends its own line(s) (an undo that was
    // already on its way included, none once retired), so a restart reads the boot as fully delivered.
    return this.#record(`${JSON.stringify({ id, exp })}\n`.repeat(missing));
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
