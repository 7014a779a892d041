import { describe, expect, it } from 'vitest';
import { parsePacket, serializePacket, type TftpPacket } from '../../server/tftp/codec.ts';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('tftp codec: golden bytes', () => {
  it('parses an RRQ with options as curl sends it', () => {
    // "\0\1" "ipxe.efi\0" "octet\0" "tsize\0" "0\0" "blksize\0" "1468\0"
    const bytes = Buffer.concat([hex('0001'), Buffer.from('ipxe.efi\0octet\0tsize\x000\0blksize\x001468\0', 'latin1')]);
    const parsed = parsePacket(bytes);
    expect(parsed).toEqual({
      ok: true,
      packet: {
        op: 'RRQ',
        filename: 'ipxe.efi',
        mode: 'octet',
        options: [
          { name: 'tsize', value: '0' },
          { name: 'blksize', value: '1468' },
        ],
      },
    });
    expect(serializePacket((parsed as { packet: TftpPacket }).packet)).toEqual(bytes);
  });

  it('lowercases the mode, keeps option spelling, first of a repeated option wins', () => {
    const bytes = Buffer.concat([hex('0001'), Buffer.from('a\0OCTET\0BlkSize\x00512\0blksize\x001024\0', 'latin1')]);
    expect(parsePacket(bytes)).toEqual({
      ok: true,
      packet: { op: 'RRQ', filename: 'a', mode: 'octet', options: [{ name: 'BlkSize', value: '512' }] },
    });
  });

  it('ignores padding NULs and an unpaired trailing option name', () => {
    const bytes = Buffer.concat([hex('0001'), Buffer.from('f\0octet\0\0\0tsize\0', 'latin1')]);
    const parsed = parsePacket(bytes);
    expect(parsed.ok && parsed.packet.op === 'RRQ' && parsed.packet.options).toEqual([]);
  });

  it('serializes DATA, ACK, ERROR and OACK to the exact bytes', () => {
    expect(serializePacket({ op: 'DATA', block: 0x1234, data: Buffer.from('hi') })).toEqual(hex('0003 1234 6869'));
    expect(serializePacket({ op: 'ACK', block: 65535 })).toEqual(hex('0004 ffff'));
    expect(serializePacket({ op: 'ERROR', code: 5, message: 'Unknown transfer ID' })).toEqual(
      Buffer.concat([hex('0005 0005'), Buffer.from('Unknown transfer ID\0')]),
    );
    expect(serializePacket({ op: 'OACK', options: [{ name: 'blksize', value: '1468' }, { name: 'windowsize', value: '16' }] })).toEqual(
      Buffer.concat([hex('0006'), Buffer.from('blksize\x001468\0windowsize\x0016\0')]),
    );
  });

  it('round-trips every packet type', () => {
    const packets: TftpPacket[] = [
      { op: 'WRQ', filename: 'x/y', mode: 'octet', options: [{ name: 'timeout', value: '3' }] },
      { op: 'DATA', block: 0, data: Buffer.alloc(0) },
      { op: 'ACK', block: 0 },
      { op: 'ERROR', code: 8, message: 'User aborted download' },
      { op: 'OACK', options: [{ name: 'tsize', value: '123456' }] },
    ];
    for (const p of packets) expect(parsePacket(serializePacket(p))).toEqual({ ok: true, packet: p });
  });

  it('tolerates an ERROR without terminator and an ACK with trailing padding', () => {
    expect(parsePacket(Buffer.concat([hex('0005 0008'), Buffer.from('abort')]))).toEqual({
      ok: true,
      packet: { op: 'ERROR', code: 8, message: 'abort' },
    });
    expect(parsePacket(hex('0004 0007 0000'))).toEqual({ ok: true, packet: { op: 'ACK', block: 7 } });
  });
});

describe('tftp codec: malformed input is a typed error', () => {
  const cases: [string, Buffer, string][] = [
    ['empty', Buffer.alloc(0), 'truncated'],
    ['one byte', hex('00'), 'truncated'],
    ['unknown opcode', hex('0009 0000'), 'unknown-opcode'],
    ['opcode zero', hex('0000'), 'unknown-opcode'],
    ['short ACK', hex('0004 00'), 'truncated'],
    ['short DATA', hex('0003'), 'truncated'],
    ['short ERROR', hex('0005 01'), 'truncated'],
    ['RRQ without mode', Buffer.concat([hex('0001'), Buffer.from('file\0')]), 'truncated'],
    ['RRQ unterminated', Buffer.concat([hex('0001'), Buffer.from('file\0octet')]), 'unterminated-string'],
    ['RRQ empty filename', Buffer.concat([hex('0001'), Buffer.from('\0octet\0')]), 'empty-filename'],
    ['OACK unterminated', Buffer.concat([hex('0006'), Buffer.from('blksize\x00512')]), 'unterminated-string'],
  ];
  for (const [name, bytes, kind] of cases) {
    it(name, () => {
      const parsed = parsePacket(bytes);
      expect(parsed.ok).toBe(false);
      if (!parsed.ok) expect(parsed.error.kind).toBe(kind);
    });
  }
});
