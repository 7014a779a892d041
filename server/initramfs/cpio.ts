/**
 * A writer for the cpio `newc` format (the one the Linux kernel unpacks as an initramfs).
 *
 * Reproducible by construction: entries are sorted by the bytes of their path, inode numbers
 * follow that order, every mtime is the same constant and every owner is root, so the same
 * inputs always give the same bytes. Names are written as UTF-8 bytes with their true byte
 * length (the npm packages we tried counted UTF-16 code units and corrupted non-ASCII names).
 */

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char' | 'block'; path: string; major: number; minor: number; mode?: number };

/** The mtime written into every entry: a constant so rebuilds are byte-identical. */
export const CPIO_MTIME = 0;

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const HEADER_SIZE = 110;

/** `./a//b/` -> `a/b`; rejects paths that climb out of the archive root. */
export function normalizeCpioPath(path: string): string {
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new Error(`cpio path escapes the archive root: ${path}`);
    parts.push(part);
  }
  if (parts.length === 0) throw new Error(`empty cpio path: ${JSON.stringify(path)}`);
  return parts.join('/');
}

function modeOf(entry: CpioEntry): number {
  switch (entry.type) {
    case 'dir':
      return S_IFDIR | (entry.mode ?? 0o755);
    case 'file':
      return S_IFREG | (entry.mode ?? 0o644);
    case 'symlink':
      return S_IFLNK | 0o777;
    case 'char':
      return S_IFCHR | (entry.mode ?? 0o600);
    case 'block':
      return S_IFBLK | (entry.mode ?? 0o600);
  }
}

function hex8(value: number): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new Error(`cpio field out of range: ${value}`);
  return value.toString(16).padStart(8, '0');
}

function pad4(length: number): number {
  return (4 - (length % 4)) % 4;
}

interface RawRecord {
  name: Buffer;
  ino: number;
  mode: number;
  nlink: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Buffer;
}

function encodeRecord(record: RawRecord): Buffer[] {
  const namesize = record.name.length + 1;
  const header =
    '070701' +
    hex8(record.ino) +
    hex8(record.mode) +
    hex8(0) + // uid
    hex8(0) + // gid
    hex8(record.nlink) +
    hex8(CPIO_MTIME) +
    hex8(record.data.length) +
    hex8(0) + // devmajor
    hex8(0) + // devminor
    hex8(record.rdevMajor) +
    hex8(record.rdevMinor) +
    hex8(namesize) +
    hex8(0); // check
  // Header (110 bytes) + name + NUL is padded to a multiple of 4; the zero fill gives NUL and padding.
  const nameBlock = Buffer.alloc(namesize + pad4(HEADER_SIZE + namesize));
  record.name.copy(nameBlock);
  const out: Buffer[] = [Buffer.from(header, 'ascii'), nameBlock];
  if (record.data.length) out.push(record.data, Buffer.alloc(pad4(record.data.length)));
  return out;
}

/**
 * Serialises `entries` into one uncompressed newc archive ending in TRAILER!!!.
 * Parent directories that are not listed are added (mode 0755); duplicate paths are an error.
 */
export function writeCpio(entries: Iterable<CpioEntry>): Buffer {
  const byPath = new Map<string, CpioEntry>();
  for (const entry of entries) {
    const path = normalizeCpioPath(entry.path);
    if (byPath.has(path)) throw new Error(`duplicate cpio entry: ${path}`);
    byPath.set(path, { ...entry, path });
  }
  for (const path of [...byPath.keys()]) {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      const existing = byPath.get(parent);
      if (!existing) byPath.set(parent, { type: 'dir', path: parent });
      else if (existing.type !== 'dir') throw new Error(`cpio entry ${path} is below non-directory ${parent}`);
    }
  }
  // Byte order of the UTF-8 names: a parent is a prefix of its children, so it always comes first.
  const sorted = [...byPath.values()]
    .map((entry) => ({ entry, name: Buffer.from(entry.path, 'utf8') }))
    .sort((a, b) => Buffer.compare(a.name, b.name));

  const chunks: Buffer[] = [];
  sorted.forEach(({ entry, name }, index) => {
    const data = entry.type === 'file' ? entry.data : entry.type === 'symlink' ? Buffer.from(entry.target, 'utf8') : Buffer.alloc(0);
    chunks.push(
      ...encodeRecord({
        name,
        ino: index + 1,
        mode: modeOf(entry),
        nlink: entry.type === 'dir' ? 2 : 1,
        rdevMajor: entry.type === 'char' || entry.type === 'block' ? entry.major : 0,
        rdevMinor: entry.type === 'char' || entry.type === 'block' ? entry.minor : 0,
        data,
      }),
    );
  });
  chunks.push(
    ...encodeRecord({ name: Buffer.from('TRAILER!!!'), ino: 0, mode: 0, nlink: 1, rdevMajor: 0, rdevMinor: 0, data: Buffer.alloc(0) }),
  );
  return Buffer.concat(chunks);
}
