import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSquashfsFile } from '../../server/images/squashfs-reader.ts';
import { UNPRIVILEGED_ID, writeSquashfs } from '../../server/images/squashfs-writer.ts';
import { encodeHeader, type TarEntry, type TarHeader } from '../../server/images/tar-reader.ts';

function fileEntry(path: string, size: number): TarEntry {
  const header: TarHeader = { path, type: 'file', typeflag: '0', size, mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000, linkname: '', devmajor: 0, devminor: 0, pax: {} };
  return {
    header,
    raw: encodeHeader(header),
    body: async function* () {
      for (let left = size; left > 0; left -= 1 << 20) yield Buffer.alloc(Math.min(left, 1 << 20), 0x5a);
    },
  };
}

describe('squashfs writer', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'netboot-sqfs-writer-'));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('rejects (never hangs) when tar2sqfs exits while entries are still being written, naming the entry', async () => {
    async function* entries(): AsyncGenerator<TarEntry> {
      for (let i = 0; i < 8; i++) yield fileEntry(`big-${i}`, 16 << 20);
    }
    // An unknown compressor: tar2sqfs exits at once, with data still to come (a full pipe, then a closed one).
    await expect(writeSquashfs(entries(), join(dir, 'out.sqfs'), { compressor: 'no-such-compressor' })).rejects.toThrow(
      /^writing the squashfs at entry "big-\d": tar2sqfs exited early \(exit [1-9]\d*\): .+/,
    );
  }, 60_000);

  it.skipIf(process.getuid?.() !== 0)('runs tar2sqfs as nobody when we are root, and hands back a file we own', async () => {
    // A wrapper ahead of the real tar2sqfs on PATH records the uid it runs as.
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await chmod(dir, 0o755);
    await writeFile(join(bin, 'tar2sqfs'), `#!/bin/sh\nid -u > ${bin}/uid; id -G > ${bin}/groups\nexec /usr/bin/tar2sqfs "$@"\n`, { mode: 0o755 });
    await chmod(bin, 0o777);
    const out = join(dir, 'ok.sqfs');
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path}`;
    try {
      await writeSquashfs((async function* () { yield fileEntry('small', 10); })(), out, { compressor: 'zstd' });
    } finally {
      process.env.PATH = path;
    }
    expect((await readFile(join(bin, 'uid'), 'utf8')).trim()).toBe(String(UNPRIVILEGED_ID));
    expect((await readFile(join(bin, 'groups'), 'utf8')).trim()).toBe(String(UNPRIVILEGED_ID));
    expect((await stat(out)).uid).toBe(0);
    expect((await readSquashfsFile(out, '/small')).toString()).toBe('Z'.repeat(10));
  }, 60_000);
});
