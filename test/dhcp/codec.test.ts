import { describe, expect, it } from 'vitest';
import {
  MessageType,
  Opt,
  clientArch,
  clientMac,
  clientNdi,
  clientUuid,
  decodeMessage,
  encodeMessage,
  getOption,
  ipxeOptions,
  maxMessageSize,
  messageType,
  option,
  parameterList,
  pxeDiscoveryControl,
  relayAgent,
  requestedIp,
  serverId,
  leaseTime,
  textOption,
  userClass,
  vendorClass,
  clientId,
  tftpServerName,
  bootfileName,
  encodeSubOptions,
  u8Option,
  ipOption,
  u32Option,
  DECODE_LIMITS,
  type DecodeStats,
} from '../../server/dhcp/codec.ts';
import { decodeFixture, fixture, request } from './helpers.ts';

describe('golden DISCOVERs from real firmware', () => {
  it('QEMU iPXE ROM (BIOS): arch 0, user class iPXE, PXEClient, iPXE option 175 kept', () => {
    const m = decodeFixture('ipxe-bios-discover.bin');
    expect(messageType(m)).toBe(MessageType.DISCOVER);
    expect(clientMac(m)).toBe('52:54:00:00:d0:01');
    expect(clientArch(m)).toEqual([0]);
    expect(userClass(m)).toEqual(['iPXE']);
    expect(vendorClass(m)).toBe('PXEClient:Arch:00000:UNDI:002001');
    expect(clientNdi(m)).toEqual({ type: 1, major: 2, minor: 1 });
    expect(maxMessageSize(m)).toBe(1472);
    expect(clientId(m)?.toString('hex')).toBe('0152540000d001');
    expect(parameterList(m)).toContain(Opt.IPXE);
    expect(ipxeOptions(m)?.length).toBeGreaterThan(0);
    expect(clientUuid(m)).toMatchObject({ type: 0, text: '5ad1b0a7-0001-4c6e-9e2b-0d0c0b0a0901' });
  });

  it('OVMF UEFI PXE: arch 7, PXEClient, UUID, broadcast flag', () => {
    const m = decodeFixture('ovmf-pxe-discover.bin');
    expect(clientMac(m)).toBe('52:54:00:00:d0:02');
    expect(clientArch(m)).toEqual([7]);
    expect(userClass(m)).toEqual([]);
    expect(vendorClass(m)).toBe('PXEClient:Arch:00007:UNDI:003000');
    expect(clientNdi(m)).toEqual({ type: 1, major: 3, minor: 0 });
    expect(clientUuid(m)?.text).toBe('5ad1b0a7-0002-4c6e-9e2b-0d0c0b0a0902');
    expect(m.flags & 0x8000).toBe(0x8000);
  });

  it('OVMF UEFI HTTP Boot: arch 16, HTTPClient', () => {
    const m = decodeFixture('ovmf-http-discover.bin');
    expect(clientMac(m)).toBe('52:54:00:00:d0:03');
    expect(clientArch(m)).toEqual([16]);
    expect(vendorClass(m)).toBe('HTTPClient:Arch:00016:UNDI:003000');
    expect(clientUuid(m)?.text).toBe('5ad1b0a7-0003-4c6e-9e2b-0d0c0b0a0903');
  });

  it('re-encodes every fixture to a message that decodes to the same options, byte for byte', () => {
    for (const name of ['ipxe-bios-discover.bin', 'ovmf-pxe-discover.bin', 'ovmf-http-discover.bin']) {
      const m = decodeFixture(name);
      const again = decodeMessage(encodeMessage(m));
      expect(again.ok).toBe(true);
      if (!again.ok) continue;
      expect(again.message.options).toEqual(m.options);
      expect(again.message.xid).toBe(m.xid);
      expect(again.message.chaddr).toEqual(m.chaddr);
      // The header and the option bytes up to END are the firmware's own.
      const original = fixture(name);
      const encoded = encodeMessage(m);
      const end = original.indexOf(0xff, 240);
      expect(encoded.subarray(0, 240)).toEqual(original.subarray(0, 240));
      expect(encoded.subarray(240, end + 1)).toEqual(original.subarray(240, end + 1));
    }
  });
});

describe('options', () => {
  it('reads user class in RFC 3004 form and as a plain string', () => {
    const rfc = request(1, '02:00:00:00:00:01', [option(Opt.USER_CLASS, [4, ...Buffer.from('iPXE'), 3, ...Buffer.from('lab')])]);
    expect(userClass(rfc)).toEqual(['iPXE', 'lab']);
    const plain = request(1, '02:00:00:00:00:01', [textOption(Opt.USER_CLASS, 'iPXE')]);
    expect(userClass(plain)).toEqual(['iPXE']);
  });

  it('reads typed values and joins split long options (RFC 3396)', () => {
    const long = Buffer.alloc(300, 0x61);
    const m = request(MessageType.REQUEST, '02:00:00:00:00:02', [
      ipOption(Opt.REQUESTED_IP, '10.0.0.7'),
      ipOption(Opt.SERVER_ID, '10.0.0.1'),
      u32Option(Opt.LEASE_TIME, 7200),
      option(Opt.CLIENT_ARCH, [0, 7, 0, 9]),
      textOption(Opt.TFTP_SERVER, 'tftp.lab'),
      textOption(Opt.BOOTFILE, 'x.efi'),
      option(Opt.VENDOR, encodeSubOptions([u8Option(6, 8)])),
      option(Opt.RELAY_AGENT, encodeSubOptions([option(1, [0, 4]), option(2, [1, 2, 3])])),
      option(200, long),
    ]);
    const decoded = decodeMessage(encodeMessage(m));
    if (!decoded.ok) throw new Error(decoded.error.detail);
    const d = decoded.message;
    expect(requestedIp(d)).toBe('10.0.0.7');
    expect(serverId(d)).toBe('10.0.0.1');
    expect(leaseTime(d)).toBe(7200);
    expect(clientArch(d)).toEqual([7, 9]);
    expect(tftpServerName(d)).toBe('tftp.lab');
    expect(bootfileName(d)).toBe('x.efi');
    expect(pxeDiscoveryControl(d)).toBe(8);
    expect(relayAgent(d)).toEqual([
      { code: 1, data: Buffer.from([0, 4]) },
      { code: 2, data: Buffer.from([1, 2, 3]) },
    ]);
    expect(d.options.filter((o) => o.code === 200).map((o) => o.data.length)).toEqual([255, 45]);
    expect(getOption(d, 200)).toEqual(long);
  });

  it('keeps unknown options byte for byte and in order, skips PAD', () => {
    const packet = encodeMessage(request(1, '02:00:00:00:00:03'));
    // Rebuild the options area by hand: PAD, an unknown option, PAD, a second unknown, END.
    const options = Buffer.from([0, 53, 1, 1, 0, 0, 250, 3, 1, 2, 3, 0, 251, 0, 255]);
    const raw = Buffer.concat([packet.subarray(0, 240), options]);
    const decoded = decodeMessage(raw);
    if (!decoded.ok) throw new Error(decoded.error.detail);
    expect(decoded.message.options).toEqual([
      { code: 53, data: Buffer.from([1]) },
      { code: 250, data: Buffer.from([1, 2, 3]) },
      { code: 251, data: Buffer.alloc(0) },
    ]);
  });

  it('reads options from file and sname when option 52 says so (file first, then sname)', () => {
    const base = encodeMessage(request(1, '02:00:00:00:00:04'));
    const raw = Buffer.concat([base.subarray(0, 240), Buffer.from([53, 1, 1, 52, 1, 3, 255])]);
    Buffer.from([60, 9, ...Buffer.from('PXEClient'), 255]).copy(raw, 108); // file
    Buffer.from([93, 2, 0, 7, 255]).copy(raw, 44); // sname
    const decoded = decodeMessage(raw);
    if (!decoded.ok) throw new Error(decoded.error.detail);
    expect(decoded.message.options.map((o) => o.code)).toEqual([53, 52, 60, 93]);
    expect(vendorClass(decoded.message)).toBe('PXEClient');
    expect(clientArch(decoded.message)).toEqual([7]);
    expect(decoded.message.file).toBe('');
    expect(decoded.message.sname).toBe('');
  });
});

describe('bad input comes back as a typed error', () => {
  const good = encodeMessage(request(1, '02:00:00:00:00:05', [textOption(Opt.VENDOR_CLASS, 'PXEClient')]));

  it('truncated packets', () => {
    for (const length of [0, 1, 100, 235, 239]) {
      const r = decodeMessage(good.subarray(0, length));
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error.reason).toBe('too-short');
    }
  });

  it('a packet cut inside an option', () => {
    // 240 + [53,1,1] + [60,9,'PXEClient'...]: cut in the middle of option 60's data.
    const r = decodeMessage(good.subarray(0, 240 + 3 + 2 + 4));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.reason).toBe('option-overrun');
  });

  it('an option length past the end', () => {
    const raw = Buffer.concat([good.subarray(0, 240), Buffer.from([53, 1, 1, 60, 200, 0x50, 0x58])]);
    const r = decodeMessage(raw);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.reason).toBe('option-overrun');
      expect(r.error.detail).toMatch(/option 60/);
    }
  });

  it('an option code with no length byte', () => {
    const r = decodeMessage(Buffer.concat([good.subarray(0, 240), Buffer.from([53, 1, 1, 60])]));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.reason).toBe('option-overrun');
  });

  it('overload pointing at a field that holds garbage, and bad overload values', () => {
    const raw = Buffer.concat([good.subarray(0, 240), Buffer.from([53, 1, 1, 52, 1, 1, 255])]);
    raw.fill(0, 108, 236);
    raw[108] = 60;
    raw[109] = 200; // runs off the 128-byte file field
    const r = decodeMessage(raw);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatchObject({ reason: 'option-overrun', detail: expect.stringMatching(/file/) });

    for (const value of [[], [0], [4], [1, 1]]) {
      const bad = Buffer.concat([good.subarray(0, 240), Buffer.from([53, 1, 1, 52, value.length, ...value, 255])]);
      const result = decodeMessage(bad);
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error.reason).toBe('bad-overload');
    }
  });

  it('no magic cookie (plain BOOTP) and a bad op', () => {
    const noMagic = Buffer.from(good);
    noMagic.writeUInt32BE(0, 236);
    expect(decodeMessage(noMagic)).toMatchObject({ ok: false, error: { reason: 'bad-magic' } });
    const badOp = Buffer.from(good);
    badOp[0] = 9;
    expect(decodeMessage(badOp)).toMatchObject({ ok: false, error: { reason: 'bad-op' } });
  });

  it('typed accessors answer undefined or [] for malformed option values', () => {
    const m = request(1, '02:00:00:00:00:06', [
      option(Opt.REQUESTED_IP, [10, 0]),
      option(Opt.CLIENT_ARCH, [0]),
      option(Opt.CLIENT_UUID, [0, 1, 2]),
      option(Opt.VENDOR, [6, 5, 1]),
    ]);
    m.options[0] = option(Opt.MESSAGE_TYPE, []);
    expect(messageType(m)).toBeUndefined();
    expect(requestedIp(m)).toBeUndefined();
    expect(clientArch(m)).toEqual([]);
    expect(clientUuid(m)).toBeUndefined();
    expect(pxeDiscoveryControl(m)).toBeUndefined();
  });
});

describe('the work one datagram can cost is bounded', () => {
  const header = encodeMessage(request(1, '02:00:00:00:00:07')).subarray(0, 240);
  const stats = (): DecodeStats => ({ optionsRead: 0, areasRead: 0 });
  /** `count` empty instances of an unknown option (2 bytes each), then END. */
  const emptyOptions = (count: number) => Buffer.concat([Buffer.from([53, 1, 1]), Buffer.alloc(count * 2).fill(Buffer.from([250, 0])), Buffer.from([255])]);

  it('a 64 KiB datagram of 32,000 options is refused before any option is parsed', () => {
    const huge = Buffer.concat([header, emptyOptions(32_000)]);
    expect(huge.length).toBeGreaterThan(64_000);
    const s = stats();
    const r = decodeMessage(huge, s);
    expect(r).toMatchObject({ ok: false, error: { reason: 'too-long', detail: expect.stringMatching(/1500/) } });
    expect(s).toEqual({ optionsRead: 0, areasRead: 0 });
  });

  it('a datagram at the size limit still decodes; one byte more does not', () => {
    const pad = DECODE_LIMITS.maxMessageBytes - 240 - 4;
    const atLimit = Buffer.concat([header, Buffer.from([53, 1, 1]), Buffer.alloc(pad, 0), Buffer.from([255])]);
    expect(atLimit.length).toBe(DECODE_LIMITS.maxMessageBytes);
    expect(decodeMessage(atLimit).ok).toBe(true);
    expect(decodeMessage(Buffer.concat([atLimit, Buffer.from([0])]))).toMatchObject({ ok: false, error: { reason: 'too-long' } });
  });

  it('options beyond the count limit stop the parse at the limit', () => {
    // 600 options fit in 1500 bytes; only maxOptions are ever read.
    const many = Buffer.concat([header, emptyOptions(600)]);
    expect(many.length).toBeLessThanOrEqual(DECODE_LIMITS.maxMessageBytes);
    const s = stats();
    const r = decodeMessage(many, s);
    expect(r).toMatchObject({ ok: false, error: { reason: 'too-many-options', detail: expect.stringMatching(/255/) } });
    expect(s.optionsRead).toBe(DECODE_LIMITS.maxOptions);

    const justUnder = Buffer.concat([header, emptyOptions(DECODE_LIMITS.maxOptions - 1)]);
    const ok = decodeMessage(justUnder);
    expect(ok.ok && ok.message.options.length).toBe(DECODE_LIMITS.maxOptions);
  });

  it('the count limit includes options in overloaded file and sname fields', () => {
    // 250 in the options field, then file (128 bytes) holds 63 more.
    const raw = Buffer.concat([header, Buffer.from([52, 1, 3]), emptyOptions(249)]);
    raw.fill(Buffer.from([250, 0]), 108, 236);
    const s = stats();
    expect(decodeMessage(raw, s)).toMatchObject({ ok: false, error: { reason: 'too-many-options', detail: expect.stringMatching(/file/) } });
    expect(s.optionsRead).toBe(DECODE_LIMITS.maxOptions);
    expect(s.areasRead).toBe(2);
  });

  it('option 52 is acted on once: a 52 inside file or sname is data, not followed again', () => {
    const raw = Buffer.concat([header, Buffer.from([53, 1, 1, 52, 1, 3, 255])]);
    Buffer.from([52, 1, 3, 60, 3, 0x61, 0x62, 0x63, 255]).copy(raw, 108); // file: another overload, then option 60
    Buffer.from([52, 1, 1, 255]).copy(raw, 44); // sname: yet another
    const s = stats();
    const r = decodeMessage(raw, s);
    if (!r.ok) throw new Error(r.error.detail);
    expect(r.message.options.map((o) => o.code)).toEqual([53, 52, 52, 60, 52]);
    expect(s.areasRead).toBe(3);
    expect(vendorClass(r.message)).toBe('abc');
  });
});
