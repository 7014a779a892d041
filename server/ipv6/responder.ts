import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../log.ts';
import { advertisesSomething, buildRouterAdvertisement, icmpv6Type, ipv6Bytes, ipv6Text, linkLocalFromMac, parseRouterSolicitation } from './ndp.ts';
import { SolicitationPolicy, type SolicitationVerdict } from './solicitation-policy.ts';

/** Built by `npm ci` (binding.gyp target netboot-ra-io, source native/ra-io/). */
export const RA_IO_HELPER = fileURLToPath(new URL('../../build/Release/netboot-ra-io', import.meta.url));

export interface ServingInterface {
  name: string;
  mac: string;
  /** Its own fe80:: address when it has one, else the EUI-64 one of its MAC (routers speak from link-local). */
  linkLocal: Buffer;
}

/** The interface holding `address` (server.address), or null when this host has none such. */
export function servingInterface(address: string, interfaces = networkInterfaces()): ServingInterface | null {
  for (const [name, addresses] of Object.entries(interfaces)) {
    const list = addresses ?? [];
    const v4 = list.find((a) => a.family === 'IPv4' && a.address === address);
    if (!v4 || v4.mac === '00:00:00:00:00:00') continue;
    const v6 = list.find((a) => a.family === 'IPv6' && a.address.toLowerCase().startsWith('fe80:'));
    return { name, mac: v4.mac, linkLocal: (v6 && ipv6Bytes(v6.address)) ?? linkLocalFromMac(v4.mac) };
  }
  return null;
}

/** One Router Solicitation seen, and what was done with it. */
export interface SolicitationEvent {
  mac: string;
  source: string;
  verdict: SolicitationVerdict | { answer: false; reason: 'malformed'; detail: string };
}

export interface RouterAdvertResponderOptions {
  iface: ServingInterface;
  log: Logger;
  policy?: SolicitationPolicy;
  helper?: string;
  now?: () => number;
  onSolicitation?: (event: SolicitationEvent) => void;
  /** How to start the helper (tests: inside a namespace). */
  spawn?: (command: string, args: string[]) => ChildProcess;
}

/**
 * server.ipv6RouterAdvert: auto. Answers Router Solicitations from machines netboot is booting
 * with an RA that advertises nothing (server/ipv6/ndp.ts), so iPXE ends its IPv6
 * autoconfiguration at once instead of waiting for a router that is not there. Frames move
 * through a small native helper (packet socket; Node has no raw sockets).
 */
export class RouterAdvertResponder {
  readonly policy: SolicitationPolicy;
  #child: ChildProcess | null = null;
  #buffered: Buffer = Buffer.alloc(0);
  #stopping = false;

  private constructor(readonly options: RouterAdvertResponderOptions) {
    this.policy = options.policy ?? new SolicitationPolicy();
  }

  /** Starts the helper and resolves once its filtered socket is open; rejects with why it cannot. */
  static async start(options: RouterAdvertResponderOptions): Promise<RouterAdvertResponder> {
    const responder = new RouterAdvertResponder(options);
    await responder.#spawn();
    return responder;
  }

  /** netboot gave this MAC a boot file (DHCP): its RS are answered for a while. */
  bootStarted(mac: string): void {
    this.policy.bootStarted(mac, this.#now());
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.stdin?.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(timer);
  }

  #now(): number {
    return this.options.now?.() ?? Date.now();
  }

  #spawn(): Promise<void> {
    const helper = this.options.helper ?? RA_IO_HELPER;
    if (!existsSync(helper)) return Promise.reject(new Error(`${helper} is missing (built by npm ci from native/ra-io/)`));
    const args = [this.options.iface.name];
    const child = this.options.spawn ? this.options.spawn(helper, args) : spawn(helper, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child = child;
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-2000);
    });
    child.stdin!.on('error', () => undefined);
    return new Promise((resolve, reject) => {
      let ready = false;
      child.stdout!.on('data', (chunk: Buffer) => {
        this.#buffered = this.#buffered.length ? Buffer.concat([this.#buffered, chunk]) : chunk;
        while (this.#buffered.length >= 2) {
          const length = this.#buffered.readUInt16BE(0);
          if (this.#buffered.length < 2 + length) break;
          const frame = this.#buffered.subarray(2, 2 + length);
          this.#buffered = this.#buffered.subarray(2 + length);
          if (length === 0 && !ready) {
            ready = true;
            resolve();
          } else if (length > 0) {
            this.#onFrame(Buffer.from(frame));
          }
        }
      });
      child.once('error', reject);
      child.once('exit', (code, signal) => {
        const why = `netboot-ra-io ${this.options.iface.name} exited (${signal ?? code}): ${stderr.trim()}`;
        if (!ready) reject(new Error(why));
        else if (!this.#stopping) this.options.log.warn({ phase: 'ipv6' }, `${why}; router solicitations are no longer answered`);
      });
    });
  }

  #onFrame(frame: Buffer): void {
    const now = this.#now();
    const type = icmpv6Type(frame);
    if (type === 134) {
      if (advertisesSomething(frame) && this.policy.routerHeardAt === null) {
        this.options.log.info({ phase: 'ipv6', from: macOf(frame) }, 'an IPv6 router advertises on this segment: router solicitations are left to it');
      }
      if (advertisesSomething(frame)) this.policy.routerHeard(now);
      return;
    }
    const parsed = parseRouterSolicitation(frame);
    if (!parsed.ok) {
      this.options.log.debug({ phase: 'ipv6', from: macOf(frame), reason: parsed.reason }, 'router solicitation dropped');
      this.options.onSolicitation?.({ mac: macOf(frame), source: '', verdict: { answer: false, reason: 'malformed', detail: parsed.reason } });
      return;
    }
    const { rs } = parsed;
    const verdict = this.policy.decide(rs.mac, now);
    const source = ipv6Text(rs.source);
    if (verdict.answer) {
      const ra = buildRouterAdvertisement({ serverMac: this.options.iface.mac, serverLinkLocal: this.options.iface.linkLocal, to: rs });
      const record = Buffer.alloc(2 + ra.length);
      record.writeUInt16BE(ra.length, 0);
      ra.copy(record, 2);
      this.#child?.stdin?.write(record);
      this.options.log.info({ phase: 'ipv6', mac: rs.mac, source }, 'answered a router solicitation (RA: no router, no prefix)');
    } else {
      this.options.log.debug({ phase: 'ipv6', mac: rs.mac, source, reason: verdict.reason }, 'router solicitation not answered');
    }
    this.options.onSolicitation?.({ mac: rs.mac, source, verdict });
  }
}

function macOf(frame: Buffer): string {
  return [...frame.subarray(6, 12)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}
