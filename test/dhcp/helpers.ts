import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseConfig } from '../../server/config/load.ts';
import type { Config } from '../../server/config/types.ts';
import {
  BOOTREQUEST,
  MessageType,
  Opt,
  decodeMessage,
  encodeMessage,
  option,
  textOption,
  u8Option,
  type DhcpMessage,
  type DhcpOption,
} from '../../server/dhcp/codec.ts';

export const FIXTURES = join(import.meta.dirname, 'fixtures');

export function fixture(name: string): Buffer {
  return readFileSync(join(FIXTURES, name));
}

export function decodeFixture(name: string): DhcpMessage {
  const decoded = decodeMessage(fixture(name));
  if (!decoded.ok) throw new Error(`${name}: ${decoded.error.detail}`);
  return decoded.message;
}

/** A Config from the same raw shape as netboot.yaml (validated by the real loader). */
export function makeConfig(raw: Record<string, unknown>): Config {
  const base = { images: { deb: { source: 'docker:debian:12' } }, ...raw };
  return parseConfig(JSON.stringify(base), '/nonexistent/netboot-dhcp-test.yaml');
}

export function macBytes(mac: string): Buffer {
  const chaddr = Buffer.alloc(16);
  Buffer.from(mac.replace(/:/g, ''), 'hex').copy(chaddr);
  return chaddr;
}

/** A client request as a PXE ROM or udhcpc would send it. */
export function request(
  type: number,
  mac: string,
  options: DhcpOption[] = [],
  header: Partial<DhcpMessage> = {},
): DhcpMessage {
  return {
    op: BOOTREQUEST,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid: 0x12345678,
    secs: 0,
    flags: 0,
    ciaddr: '0.0.0.0',
    yiaddr: '0.0.0.0',
    siaddr: '0.0.0.0',
    giaddr: '0.0.0.0',
    chaddr: macBytes(mac),
    sname: '',
    file: '',
    options: [u8Option(Opt.MESSAGE_TYPE, type), ...options],
    ...header,
  };
}

export function archOption(arch: number): DhcpOption {
  return option(Opt.CLIENT_ARCH, [arch >> 8, arch & 255]);
}

export function pxeDiscover(mac: string, arch = 7, extra: DhcpOption[] = []): DhcpMessage {
  return request(MessageType.DISCOVER, mac, [
    archOption(arch),
    textOption(Opt.VENDOR_CLASS, `PXEClient:Arch:${String(arch).padStart(5, '0')}:UNDI:003016`),
    ...extra,
  ]);
}

export function pxeDiscoverBytes(mac: string, arch = 7): Buffer {
  return encodeMessage(pxeDiscover(mac, arch));
}

/** Deterministic fuzz corpus: random bytes, truncations, bit flips, option-length lies. */
export function fuzzPackets(seeds: Buffer[], count: number, seed: number): Buffer[] {
  let state = seed >>> 0;
  const rand = () => {
    // xorshift32
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  const packets: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const base = seeds[rand() % seeds.length]!;
    const kind = rand() % 5;
    let p: Buffer;
    if (kind === 0) {
      p = Buffer.alloc(rand() % 700);
      for (let j = 0; j < p.length; j++) p[j] = rand() & 255;
    } else if (kind === 1) {
      p = Buffer.from(base.subarray(0, rand() % base.length));
    } else if (kind === 2) {
      p = Buffer.from(base);
      const flips = 1 + (rand() % 8);
      for (let j = 0; j < flips; j++) {
        const at = rand() % p.length;
        p[at] = p[at]! ^ (1 << (rand() % 8));
      }
    } else if (kind === 3) {
      // Rewrite bytes in the options area only, keeping the header valid.
      p = Buffer.from(base);
      const n = 1 + (rand() % 6);
      for (let j = 0; j < n; j++) p[240 + (rand() % (p.length - 240))] = rand() & 255;
    } else {
      // Header intact, overload set and sname/file filled with noise.
      p = Buffer.concat([base.subarray(0, 240), Buffer.from([53, 1, 1 + (rand() % 8), 52, 1, rand() % 5, 255])]);
      for (let j = 44; j < 236; j++) p[j] = rand() % 4 === 0 ? rand() & 255 : p[j]!;
    }
    packets.push(p);
  }
  return packets;
}
