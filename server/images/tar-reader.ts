/**
 * A streaming tar reader for untrusted archives. Handles ustar, GNU long names (L/K), PAX
 * extended headers (x; g applies to every later entry) and base-256 sizes. Extended headers
 * are capped (MAX_EXTENSION_BYTES), numbers must parse, names must not climb out with `..` and
 * hard links must point inside: anything else is a BadTarError naming the entry and offset.
 * Contents are never buffered: they stream as the source's own chunks. Consumers that pass
 * entries on (squashfs-writer.ts) re-encode headers from the parsed fields, never `raw`.
 */

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo' | 'other';

export interface TarHeader {
  /** Normalised: no leading `./` or `/`, no trailing `/`; the root is ''. */
  path: string;
  type: EntryType;
  /** Raw typeflag character. */
  typeflag: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  /** Symlink target as stored; for hard links normalised like `path`. */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** PAX records of this entry (e.g. SCHILY.xattr.security.capability). */
  pax: Record<string, string>;
}

export interface TarEntry {
  header: TarHeader;
  /** Extension records + the header block, exactly as read (or as encoded). */
  raw: Buffer;
  /** Data plus padding to 512 bytes, as raw chunks. Must be consumed or skipped before the next entry. */
  body: () => AsyncIterable<Buffer>;
}

export class TruncatedTarError extends Error {
  constructor(what: string) {
    super(`truncated tar archive: unexpected end of data ${what}`);
  }
}

/** A header the reader refuses (bad number, oversized extension, name leaving the root): names the entry and offset. */
export class BadTarError extends Error {
  override name = 'BadTarError';
}

/** Extended headers (PAX, GNU long name/link) larger than this are refused: no real name or xattr set comes close. */
export const MAX_EXTENSION_BYTES = 1 << 20;

/** Pulls exact byte counts out of an async iterable of chunks. */
export class ByteReader {
  private iterator: AsyncIterator<Buffer>;
  private pending: Buffer = Buffer.alloc(0);
  /** Bytes consumed so far. */
  position = 0;

  constructor(source: AsyncIterable<Buffer | string>) {
    this.iterator = (source as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  private async next(): Promise<Buffer | null> {
    const next = await this.iterator.next();
    if (next.done) return null;
    return typeof next.value === 'string' ? Buffer.from(next.value) : next.value;
  }

  private async fill(): Promise<boolean> {
    const chunk = await this.next();
    if (!chunk) return false;
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    return true;
  }

  /** Exactly n bytes, or null at end of data when nothing was read; throws when cut short. */
  async read(n: number): Promise<Buffer | null> {
    if (this.pending.length < n) {
      // Collect chunks in a list and join once: linear in n however small the chunks are.
      const parts = [this.pending];
      let have = this.pending.length;
      while (have < n) {
        const chunk = await this.next();
        if (!chunk) {
          this.pending = Buffer.concat(parts);
          if (have === 0) return null;
          throw new TruncatedTarError(`(wanted ${n} bytes at offset ${this.position}, got ${have})`);
        }
        parts.push(chunk);
        have += chunk.length;
      }
      this.pending = Buffer.concat(parts);
    }
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    this.position += n;
    return out;
  }

  /** n bytes as the source's chunks (zero copy). */
  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.pending.length === 0 && !(await this.fill())) {
        throw new TruncatedTarError(`(${left} bytes of entry data missing at offset ${this.position})`);
      }
      const take = Math.min(left, this.pending.length);
      const out = this.pending.subarray(0, take);
      this.pending = this.pending.subarray(take);
      this.position += take;
      left -= take;
      yield out;
    }
  }

  async skip(n: number): Promise<void> {
    for await (const _ of this.chunks(n)) {
      /* discard */
    }
  }

  /** Reads and discards whatever is left (e.g. the zero records after the end marker). */
  async drain(): Promise<void> {
    while (await this.fill()) this.pending = Buffer.alloc(0);
    this.pending = Buffer.alloc(0);
  }

  /** Releases the source (e.g. closes the underlying stream early). */
  async close(): Promise<void> {
    await this.iterator.return?.();
  }
}

export function padded(size: number): number {
  return Math.ceil(size / 512) * 512;
}

/** Canonical relative path: no `.`/empty components, `..` resolved lexically and never above the root. */
export function normalisePath(path: string): string {
  if (!/(^|\/)\.{0,2}(\/|$)|^\//.test(path)) return path; // already canonical (the common case)
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') parts.pop();
    else parts.push(part);
  }
  return parts.join('/');
}

function cstring(block: Buffer, start: number, length: number): string {
  const field = block.subarray(start, start + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? length : end).toString('utf8');
}

function numeric(block: Buffer, start: number, length: number): number {
  const field = block.subarray(start, start + length);
  if (field[0]! & 0x80) {
    // GNU base-256: big-endian, first byte's top bit is the marker.
    let value = field[0]! & 0x7f;
    for (let i = 1; i < length; i++) value = value * 256 + field[i]!;
    return value;
  }
  const text = cstring(block, start, length).replace(/[ \0]+$/, '').trim();
  if (!/^[0-7]*$/.test(text)) return NaN; // the caller names the field and entry
  return text ? parseInt(text, 8) : 0;
}

/** A PAX number (decimal; mtime may have a fraction); NaN when malformed. */
function paxNumber(value: string, fraction = false): number {
  if (!(fraction ? /^-?\d{1,20}(\.\d*)?$/ : /^\d{1,20}$/).test(value)) return NaN;
  const n = Number(value);
  return Number.isSafeInteger(Math.trunc(n)) ? n : NaN;
}

function describeEntry(path: string, offset: number): string {
  return `tar entry ${JSON.stringify(path.length > 200 ? `${path.slice(0, 200)}...` : path)} at offset ${offset}`;
}

/** True when a stored name climbs with a `..` component (it could only mean leaving the root). */
function climbs(path: string): boolean {
  return path.split('/').includes('..');
}

function checksumOk(block: Buffer): boolean {
  const stored = numeric(block, 148, 8);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  return stored === sum;
}

export function parsePax(data: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  let offset = 0;
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset);
    if (space === -1) break;
    const length = parseInt(data.subarray(offset, space).toString('ascii'), 10);
    if (!(length > 0)) break;
    const record = data.subarray(space + 1, offset + length - 1); // minus trailing \n
    const eq = record.indexOf(0x3d);
    if (eq !== -1) {
      // Values may be binary (xattrs): keep them as latin1-safe strings via 'binary'.
      const key = record.subarray(0, eq).toString('utf8');
      records[key] = record.subarray(eq + 1).toString(key.startsWith('SCHILY.xattr.') ? 'latin1' : 'utf8');
    }
    offset += length;
  }
  return records;
}

const TYPES: Record<string, EntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};

/** Iterates the entries of a tar stream. Unconsumed bodies are skipped automatically. */
export async function* readTar(source: AsyncIterable<Buffer | string> | ByteReader): AsyncGenerator<TarEntry> {
  const reader = source instanceof ByteReader ? source : new ByteReader(source);
  const extension: Buffer[] = [];
  let pax: Record<string, string> = {};
  let globalPax: Record<string, string> = {};
  let longName: string | undefined;
  let longLink: string | undefined;
  let extensionBytes = 0;
  for (;;) {
    const block = await reader.read(512);
    if (block === null) {
      if (extension.length) throw new TruncatedTarError('after an extended header');
      return; // no end-of-archive marker: tolerated, as GNU tar does
    }
    if (block.every((b) => b === 0)) {
      if (extension.length) throw new TruncatedTarError('after an extended header');
      return;
    }
    if (!checksumOk(block)) throw new Error(`invalid tar header at offset ${reader.position - 512} (checksum mismatch)`);
    const headerOffset = reader.position - 512;
    const typeflag = String.fromCharCode(block[156]!);
    const size = numeric(block, 124, 12);
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new BadTarError(`${describeEntry(cstring(block, 0, 100), headerOffset)}: size field is not a number (${JSON.stringify(cstring(block, 124, 12))})`);
    }
    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (size > MAX_EXTENSION_BYTES || extensionBytes + size > MAX_EXTENSION_BYTES) {
        throw new BadTarError(`${describeEntry(cstring(block, 0, 100), headerOffset)}: extended header of ${size} bytes (limit ${MAX_EXTENSION_BYTES})`);
      }
      extensionBytes += size;
      const data = await reader.read(padded(size));
      if (data === null) throw new TruncatedTarError('in an extended header');
      extension.push(block, data);
      const content = data.subarray(0, size);
      if (typeflag === 'x') pax = { ...pax, ...parsePax(content) };
      else if (typeflag === 'g') {
        globalPax = { ...globalPax, ...parsePax(content) };
        if (Object.entries(globalPax).reduce((n, [k, v]) => n + k.length + v.length, 0) > MAX_EXTENSION_BYTES) {
          throw new BadTarError(`${describeEntry(cstring(block, 0, 100), headerOffset)}: global PAX records exceed ${MAX_EXTENSION_BYTES} bytes`);
        }
      }
      else if (typeflag === 'L') longName = cstring(content, 0, content.length);
      else longLink = cstring(content, 0, content.length);
      continue;
    }
    const magic = block.subarray(257, 263).toString('latin1');
    const prefix = magic === 'ustar\0' ? cstring(block, 345, 155) : '';
    const name = cstring(block, 0, 100);
    const records = { ...globalPax, ...pax };
    const rawPath = records.path ?? longName ?? (prefix ? `${prefix}/${name}` : name);
    const rawLink = records.linkpath ?? longLink ?? cstring(block, 157, 100);
    const type = TYPES[typeflag] ?? 'other';
    const where = describeEntry(rawPath, headerOffset);
    if (rawPath.includes('\0') || climbs(rawPath)) throw new BadTarError(`${where}: the name leaves the root ('..')`);
    if (type === 'link' && (rawLink.startsWith('/') || climbs(rawLink) || normalisePath(rawLink) === '')) {
      throw new BadTarError(`${where}: hard link target ${JSON.stringify(rawLink)} is outside the root (absolute, '..' or empty)`);
    }
    const field = (name: string, pax: string | undefined, fallback: number, fraction = false): number => {
      const value = pax !== undefined ? paxNumber(pax, fraction) : fallback;
      if (Number.isNaN(value)) {
        throw new BadTarError(`${where}: ${name} is not a number ${pax === undefined ? 'in the header' : `in a PAX record (${JSON.stringify(pax.slice(0, 40))})`}`);
      }
      return value;
    };
    const header: TarHeader = {
      path: normalisePath(rawPath),
      type,
      typeflag,
      size: field('size', records.size, size),
      mode: field('mode', undefined, numeric(block, 100, 8)) & 0o7777,
      uid: field('uid', records.uid, numeric(block, 108, 8)),
      gid: field('gid', records.gid, numeric(block, 116, 8)),
      mtime: Math.floor(field('mtime', records.mtime, numeric(block, 136, 12), true)),
      linkname: type === 'link' ? normalisePath(rawLink) : rawLink,
      devmajor: type === 'char' || type === 'block' ? field('devmajor', undefined, numeric(block, 329, 8)) : 0,
      devminor: type === 'char' || type === 'block' ? field('devminor', undefined, numeric(block, 337, 8)) : 0,
      pax: records,
    };
    // Hard links, dirs, devices carry no data whatever the size field says (except 'file').
    const dataSize = type === 'file' || type === 'other' ? header.size : 0;
    const raw = extension.length ? Buffer.concat([...extension, block]) : Buffer.from(block);
    extension.length = 0;
    extensionBytes = 0;
    pax = {};
    longName = undefined;
    longLink = undefined;
    let consumed = false;
    const body = () => {
      if (consumed) throw new Error('tar entry body read twice');
      consumed = true;
      return reader.chunks(padded(dataSize));
    };
    yield { header, raw, body };
    if (!consumed) await reader.skip(padded(dataSize));
  }
}

/** The data of an entry (without padding) as chunks. */
export async function* entryData(entry: TarEntry): AsyncGenerator<Buffer> {
  let left = entry.header.type === 'file' ? entry.header.size : 0;
  for await (const chunk of entry.body()) {
    if (left <= 0) continue;
    const piece = chunk.length > left ? chunk.subarray(0, left) : chunk;
    left -= piece.length;
    yield piece;
  }
}

function octal(value: number, length: number): string {
  return value.toString(8).padStart(length - 1, '0') + '\0';
}

function paxRecord(key: string, value: string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), Buffer.from(value, key.startsWith('SCHILY.xattr.') ? 'latin1' : 'utf8'), Buffer.from('\n')]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

/**
 * Encodes a header (ustar, plus a PAX record set for long names and the given PAX records).
 * Used for the few entries the flattener has to rewrite.
 */
export function encodeHeader(header: Omit<TarHeader, 'pax' | 'typeflag'> & { pax?: Record<string, string> }): Buffer {
  const typeflag: Record<EntryType, string> = { file: '0', link: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6', other: '0' };
  const records: Record<string, string> = {};
  for (const [key, value] of Object.entries(header.pax ?? {})) {
    if (!['path', 'linkpath', 'size', 'uid', 'gid', 'mtime'].includes(key)) records[key] = value;
  }
  const name = header.type === 'dir' ? `${header.path}/` : header.path;
  if (Buffer.byteLength(name) > 100) records.path = name;
  if (Buffer.byteLength(header.linkname) > 100) records.linkpath = header.linkname;
  // Values too large for the octal fields go to PAX records (the field keeps 0).
  const fit = (key: 'uid' | 'gid' | 'size' | 'mtime', value: number, digits: number): number => {
    if (value < 8 ** digits) return value;
    records[key] = String(value);
    return 0;
  };
  const uid = fit('uid', header.uid, 7);
  const gid = fit('gid', header.gid, 7);
  const size = fit('size', header.size, 11);
  const mtime = fit('mtime', header.mtime, 11);
  const block = Buffer.alloc(512);
  block.write(name.slice(0, 100), 0, 100, 'utf8');
  block.write(octal(header.mode, 8), 100, 'ascii');
  block.write(octal(uid, 8), 108, 'ascii');
  block.write(octal(gid, 8), 116, 'ascii');
  block.write(octal(size, 12), 124, 'ascii');
  block.write(octal(mtime, 12), 136, 'ascii');
  block.write(typeflag[header.type], 156, 'ascii');
  block.write(header.linkname.slice(0, 100), 157, 100, 'utf8');
  block.write('ustar\x0000', 257, 'latin1');
  block.write(octal(header.devmajor, 8), 329, 'ascii');
  block.write(octal(header.devminor, 8), 337, 'ascii');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += block[i]!;
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  if (Object.keys(records).length === 0) return block;
  const paxData = Buffer.concat(Object.entries(records).map(([k, v]) => paxRecord(k, v)));
  const paxHeader = encodeHeader({ ...header, path: 'PaxHeader', type: 'file', size: paxData.length, linkname: '', uid: 0, gid: 0, mtime: mtime, pax: {} });
  paxHeader.write('x', 156, 'ascii');
  // Recompute the checksum after changing the typeflag.
  paxHeader.fill(0x20, 148, 156);
  let paxSum = 0;
  for (let i = 0; i < 512; i++) paxSum += paxHeader[i]!;
  paxHeader.write(paxSum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return Buffer.concat([paxHeader, paxData, Buffer.alloc(padded(paxData.length) - paxData.length), block]);
}

export const END_OF_ARCHIVE = Buffer.alloc(1024);
