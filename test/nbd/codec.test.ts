import { describe, expect, it } from 'vitest';
import {
  ClientStreamParser,
  Cmd,
  decodeExportName,
  decodeInfoRequest,
  encodeExportNameReply,
  encodeInfoSuccess,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
  encodeServerGreeting,
  encodeSimpleReply,
  EXPORT_TRANSMISSION_FLAGS,
  Info,
  NbdProtocolError,
  Opt,
  Rep,
  type ClientMessage,
} from '../../server/nbd/codec.ts';
import { clientFlags, hex, infoData, option, request } from './wire.ts';

describe('nbd codec: server messages, golden bytes', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', () => {
    expect(encodeServerGreeting()).toEqual(hex('4e42444d41474943 49484156454f5054 0003'));
  });

  it('encodes option replies: magic, option, type, length, data', () => {
    expect(encodeOptionReply(Opt.ABORT, Rep.ACK)).toEqual(hex('0003e889045565a9 00000002 00000001 00000000'));
    expect(encodeOptionError(Opt.STRUCTURED_REPLY, Rep.ERR_UNSUP)).toEqual(hex('0003e889045565a9 00000008 80000001 00000000'));
    expect(encodeOptionError(Opt.GO, Rep.ERR_UNKNOWN, 'no')).toEqual(hex('0003e889045565a9 00000007 80000006 00000002 6e6f'));
    expect(encodeServerEntry('img')).toEqual(hex('0003e889045565a9 00000003 00000002 00000007 00000003 696d67'));
  });

  it('transmission flags are HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN', () => {
    expect(EXPORT_TRANSMISSION_FLAGS).toBe(0x0103);
  });

  it('answers INFO/GO with INFO_EXPORT first, the requested infos we know, then ACK', () => {
    const exp = { name: 'ab', size: 0x1_0000_0200, transmissionFlags: EXPORT_TRANSMISSION_FLAGS };
    expect(encodeInfoSuccess(Opt.GO, exp, [])).toEqual(
      hex('0003e889045565a9 00000007 00000003 0000000c 0000 0000000100000200 0103' + '0003e889045565a9 00000007 00000001 00000000'),
    );
    expect(encodeInfoSuccess(Opt.INFO, exp, [Info.BLOCK_SIZE, Info.NAME, Info.DESCRIPTION, 999])).toEqual(
      hex(
        '0003e889045565a9 00000006 00000003 0000000c 0000 0000000100000200 0103' +
          '0003e889045565a9 00000006 00000003 00000004 0001 6162' +
          '0003e889045565a9 00000006 00000003 0000000e 0003 00000001 00001000 02000000' +
          '0003e889045565a9 00000006 00000001 00000000',
      ),
    );
  });

  it('answers EXPORT_NAME with size, flags and 124 zeroes unless NO_ZEROES was agreed', () => {
    expect(encodeExportNameReply(4096, 0x0103, true)).toEqual(hex('0000000000001000 0103'));
    const withZeroes = encodeExportNameReply(4096, 0x0103, false);
    expect(withZeroes.length).toBe(134);
    expect(withZeroes.subarray(0, 10)).toEqual(hex('0000000000001000 0103'));
    expect(withZeroes.subarray(10).every((b) => b === 0)).toBe(true);
  });

  it('encodes simple replies: magic, error, handle', () => {
    expect(encodeSimpleReply(1, 0x0102030405060708n)).toEqual(hex('67446698 00000001 0102030405060708'));
  });
});

describe('nbd codec: option data', () => {
  it('decodes INFO/GO data', () => {
    expect(decodeInfoRequest(infoData('img', [3, 1]))).toEqual({ name: 'img', infos: [3, 1] });
    expect(decodeInfoRequest(infoData('', []))).toEqual({ name: '', infos: [] });
    expect(decodeInfoRequest(hex('00000003 696d67 0001 0003'))).toEqual({ name: 'img', infos: [3] });
  });

  it('rejects malformed INFO/GO data', () => {
    expect(decodeInfoRequest(hex('0000'))).toBeNull();
    expect(decodeInfoRequest(hex('00000010 696d67 0000'))).toBeNull(); // name longer than the data
    expect(decodeInfoRequest(hex('00000003 696d67 0002 0003'))).toBeNull(); // count says 2, 1 given
    expect(decodeInfoRequest(hex('00000003 696d67 0000 00'))).toBeNull(); // trailing byte
    expect(decodeInfoRequest(hex('00000003 690067 0000'))).toBeNull(); // NUL in the name
    expect(decodeInfoRequest(hex('00000002 c328 0000'))).toBeNull(); // not UTF-8
    expect(decodeInfoRequest(Buffer.concat([hex('00001001'), Buffer.alloc(4097, 0x61), hex('0000')]))).toBeNull(); // > 4096
  });

  it('decodes EXPORT_NAME data (the whole data is the name)', () => {
    expect(decodeExportName(Buffer.from('abc'))).toBe('abc');
    expect(decodeExportName(Buffer.alloc(0))).toBe('');
    expect(decodeExportName(hex('6100'))).toBeNull();
  });
});

function parseAll(parser: ClientStreamParser): ClientMessage[] {
  const out: ClientMessage[] = [];
  for (let m = parser.next(); m !== null; m = parser.next()) {
    out.push(m);
    if (m.kind === 'option' && m.option === Opt.GO) parser.enterTransmission();
  }
  return out;
}

describe('nbd codec: incremental client stream parser', () => {
  const payload = Buffer.alloc(1000, 0xaa);
  const stream = Buffer.concat([
    clientFlags(3),
    option(Opt.LIST),
    option(Opt.GO, infoData('img', [3])),
    request(Cmd.READ, 7n, 4096, 512),
    request(Cmd.WRITE, 8n, 0, payload.length, 1, payload),
    request(Cmd.DISC, 9n, 0, 0),
  ]);
  const expected: ClientMessage[] = [
    { kind: 'clientFlags', flags: 3 },
    { kind: 'option', option: Opt.LIST, data: Buffer.alloc(0) },
    { kind: 'option', option: Opt.GO, data: infoData('img', [3]) },
    { kind: 'request', flags: 0, type: Cmd.READ, handle: 7n, offset: 4096n, length: 512 },
    { kind: 'request', flags: 1, type: Cmd.WRITE, handle: 8n, offset: 0n, length: 1000 },
    { kind: 'request', flags: 0, type: Cmd.DISC, handle: 9n, offset: 0n, length: 0 },
  ];

  it('parses a whole session given at once', () => {
    const p = new ClientStreamParser();
    p.push(stream);
    expect(parseAll(p)).toEqual(expected);
    expect(p.bufferedBytes).toBe(0);
  });

  it('gives the same messages for every split point, and byte by byte', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const p = new ClientStreamParser();
      const out: ClientMessage[] = [];
      for (const part of [stream.subarray(0, cut), stream.subarray(cut)]) {
        p.push(part);
        out.push(...parseAll(p));
      }
      expect(out, `split at ${cut}`).toEqual(expected);
    }
    const p = new ClientStreamParser();
    const out: ClientMessage[] = [];
    for (const byte of stream) {
      p.push(Buffer.from([byte]));
      out.push(...parseAll(p));
    }
    expect(out).toEqual(expected);
  });

  it('drops a write payload without waiting for it all in one chunk', () => {
    const p = new ClientStreamParser();
    p.push(clientFlags(1));
    p.next();
    p.enterTransmission();
    p.push(request(Cmd.WRITE, 1n, 0, 10));
    p.push(Buffer.alloc(4));
    expect(p.next()).toBeNull();
    p.push(Buffer.concat([Buffer.alloc(6), request(Cmd.READ, 2n, 0, 1)]));
    expect(p.next()).toMatchObject({ type: Cmd.WRITE, handle: 1n });
    expect(p.next()).toMatchObject({ type: Cmd.READ, handle: 2n });
  });

  const failures: { name: string; bytes: Buffer; code: string; transmission?: boolean }[] = [
    { name: 'unknown client flags', bytes: clientFlags(4), code: 'bad-client-flags' },
    { name: 'option without IHAVEOPT', bytes: Buffer.concat([clientFlags(1), hex('0000000000000000 00000001 00000000')]), code: 'bad-option-magic' },
    { name: 'oversize option', bytes: Buffer.concat([clientFlags(1), option(Opt.GO, Buffer.alloc(0), 65537)]), code: 'option-too-long' },
    { name: 'request with bad magic', bytes: Buffer.concat([clientFlags(1), hex('deadbeef'), Buffer.alloc(24)]), code: 'bad-request-magic', transmission: true },
    {
      name: 'write over 32 MiB',
      bytes: Buffer.concat([clientFlags(1), request(Cmd.WRITE, 1n, 0, 32 * 1024 * 1024 + 1)]),
      code: 'write-too-long',
      transmission: true,
    },
  ];
  for (const f of failures) {
    it(`fails with a typed error on ${f.name}, and stays failed`, () => {
      const p = new ClientStreamParser();
      p.push(f.bytes);
      const run = () => {
        for (let m = p.next(); m !== null; m = p.next()) if (f.transmission && m.kind === 'clientFlags') p.enterTransmission();
      };
      expect(run).toThrow(NbdProtocolError);
      try {
        p.next();
        expect.unreachable();
      } catch (err) {
        expect((err as NbdProtocolError).code).toBe(f.code);
      }
    });
  }

  it('waits for more input on an option cut inside its data', () => {
    const p = new ClientStreamParser();
    const opt = option(Opt.GO, infoData('image-id'));
    p.push(Buffer.concat([clientFlags(1), opt.subarray(0, opt.length - 1)]));
    expect(p.next()).toEqual({ kind: 'clientFlags', flags: 1 });
    expect(p.next()).toBeNull();
    p.push(opt.subarray(opt.length - 1));
    expect(p.next()).toMatchObject({ kind: 'option', option: Opt.GO });
  });
});
