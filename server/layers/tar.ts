/**
 * A minimal, reproducible tar writer (ustar, with pax extended headers for long names),
 * enough for the per-machine top layer that /init unpacks with busybox tar. Numeric owners
 * only (uname/gname left empty), fixed mtimes, entries in the order given.
 */

export type TarEntry =
  | { type: 'file'; path: string; mode: number; uid: number; gid: number; content: Buffer }
  | { type: 'dir'; path: string; mode: number; uid: number; gid: number }
  | { type: 'symlink'; path: string; mode?: number; uid: number; gid: number; target: string };

const BLOCK = 512;
/** 2020-01-01: a fixed mtime keeps the layer (and its ETag) a function of its content. */
export const LAYER_MTIME = 1577836800;

export function writeTar(entries: readonly TarEntry[], mtime = LAYER_MTIME): Buffer {
  const chunks: Buffer[] = [];
  for (const entry of entries) {
    const name = entry.type === 'dir' ? `${entry.path.replace(/\/+$/, '')}/` : entry.path;
    const linkname = entry.type === 'symlink' ? entry.target : '';
    const pax: Record<string, string> = {};
    if (Buffer.byteLength(name) > 100) pax.path = name;
    if (Buffer.byteLength(linkname) > 100) pax.linkpath = linkname;
    if (Object.keys(pax).length) {
      const body = paxRecords(pax);
      chunks.push(header({ name: 'PaxHeader', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime, type: 'x', linkname: '' }), pad(body));
    }
    const content = entry.type === 'file' ? entry.content : Buffer.alloc(0);
    const mode = entry.type === 'symlink' ? (entry.mode ?? 0o777) : entry.mode;
    const type = entry.type === 'file' ? '0' : entry.type === 'dir' ? '5' : '2';
    chunks.push(header({ name: truncate(name, 100), mode, uid: entry.uid, gid: entry.gid, size: content.length, mtime, type, linkname: truncate(linkname, 100) }));
    if (content.length) chunks.push(pad(content));
  }
  chunks.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(chunks);
}

interface HeaderFields {
  name: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  type: string;
  linkname: string;
}

function header(h: HeaderFields): Buffer {
  const block = Buffer.alloc(BLOCK);
  block.write(h.name, 0, 100, 'utf8');
  octal(block, 100, 8, h.mode & 0o7777);
  octal(block, 108, 8, h.uid);
  octal(block, 116, 8, h.gid);
  octal(block, 124, 12, h.size);
  octal(block, 136, 12, h.mtime);
  block.fill(0x20, 148, 156);
  block.write(h.type, 156, 1, 'ascii');
  block.write(h.linkname, 157, 100, 'utf8');
  block.write('ustar\u000000', 257, 8, 'binary');
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 8, 'ascii');
  return block;
}

function octal(block: Buffer, offset: number, width: number, value: number): void {
  const text = value.toString(8);
  if (text.length > width - 1) throw new RangeError(`tar: value ${value} does not fit a ${width}-byte field`);
  block.write(`${text.padStart(width - 1, '0')}\u0000`, offset, width, 'ascii');
}

/** Each pax record is "<len> key=value\n" where <len> counts the whole record, itself included. */
function paxRecords(fields: Record<string, string>): Buffer {
  let out = '';
  for (const [key, value] of Object.entries(fields)) {
    const rest = ` ${key}=${value}\n`;
    let len = Buffer.byteLength(rest) + 1;
    while (String(len).length + Buffer.byteLength(rest) !== len) len = String(len).length + Buffer.byteLength(rest);
    out += `${len}${rest}`;
  }
  return Buffer.from(out, 'utf8');
}

function pad(data: Buffer): Buffer {
  const rest = data.length % BLOCK;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(BLOCK - rest)]);
}

function truncate(text: string, bytes: number): string {
  const buf = Buffer.from(text, 'utf8');
  return buf.length <= bytes ? text : buf.subarray(0, bytes).toString('utf8');
}
