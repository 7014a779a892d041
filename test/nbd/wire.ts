/** Client-side NBD messages for tests: what a client puts on the wire, built by hand. */

export const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

export function clientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function option(opt: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): Buffer {
  const b = Buffer.alloc(16);
  b.write('IHAVEOPT', 0, 'latin1');
  b.writeUInt32BE(opt >>> 0, 8);
  b.writeUInt32BE(declaredLength >>> 0, 12);
  return Buffer.concat([b, data]);
}

export function infoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 6 + n.length + 2 * i));
  return b;
}

export function request(type: number, handle: bigint, offset: bigint | number, length: number, flags = 0, payload?: Buffer): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length >>> 0, 24);
  return payload ? Buffer.concat([b, payload]) : b;
}
