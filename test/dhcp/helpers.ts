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
