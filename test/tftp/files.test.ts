import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bufferFile, dirSource, generatedSource, ipxeSource, memorySource, mountSources, normaliseTftpPath, onlyFiles, type TftpFileSource } from '../../server/tftp/files.ts';

const client = { address: '127.0.0.1', port: 1234 };

async function contentOf(source: TftpFileSource, path: string): Promise<string | null> {
  const file = await source(path, client);
  if (!file) return null;
  try {
    return (await file.read(0, file.size)).toString();
  } finally {
    await file.close();
  }
}

describe('normaliseTftpPath', () => {
  const ok: [string, string][] = [
    ['ipxe.efi', 'ipxe.efi'],
    ['/ipxe.efi', 'ipxe.efi'],
    ['//images//abc/./vmlinuz', 'images/abc/vmlinuz'],
    ['machines/52-54-00-12-34-56/boot.ipxe', 'machines/52-54-00-12-34-56/boot.ipxe'],
    ['a..b/c..', 'a..b/c..'],
  ];
  for (const [input, expected] of ok) it(`${JSON.stringify(input)} -> ${expected}`, () => expect(normaliseTftpPath(input)).toEqual({ ok: true, path: expected }));

  const refused = ['../etc/passwd', 'images/../../x', '..', 'a/..', 'a\\b', '..\\..\\x', 'a\x00b', 'a\nb', '', '/', '/./'];
  for (const input of refused) it(`refuses ${JSON.stringify(input)}`, () => expect(normaliseTftpPath(input).ok).toBe(false));
});

describe('sources', () => {
  let root: string;
  let outside: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'tftp-files-'));
    outside = await mkdtemp(join(tmpdir(), 'tftp-outside-'));
    await writeFile(join(outside, 'secret'), 'secret');
    await mkdir(join(root, 'sub'));
    await writeFile(join(root, 'sub/file'), 'inside');
    await symlink(join(outside, 'secret'), join(root, 'out-link'));
    await symlink(outside, join(root, 'out-dir'));
    await symlink('sub/file', join(root, 'in-link'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  });

  it('dirSource serves files inside, follows links that stay inside, refuses links out and directories', async () => {
    const source = dirSource(root);
    expect(await contentOf(source, 'sub/file')).toBe('inside');
    expect(await contentOf(source, 'in-link')).toBe('inside');
    expect(await contentOf(source, 'out-link')).toBeNull();
    expect(await contentOf(source, 'out-dir/secret')).toBeNull();
    expect(await contentOf(source, 'sub')).toBeNull();
    expect(await contentOf(source, 'missing')).toBeNull();
    expect(await contentOf(source, '../' + outside.split('/').pop() + '/secret')).toBeNull();
  });

  it('dirSource reads at offsets and short at the end', async () => {
    const file = (await dirSource(root)('sub/file', client))!;
    expect((await file.read(2, 3)).toString()).toBe('sid');
    expect((await file.read(4, 100)).toString()).toBe('de');
    expect((await file.read(6, 100)).length).toBe(0);
    await file.close();
  });

  it('mountSources routes by the longest prefix and strips it', async () => {
    const seen: string[] = [];
    const source = mountSources({
      '': memorySource({ 'ipxe.efi': Buffer.from('ipxe') }),
      'images/': dirSource(root),
      'machines/': generatedSource(async (path, c) => {
        seen.push(`${path}@${c.address}`);
        return path.endsWith('/boot.ipxe') ? '#!ipxe\n' : null;
      }),
    });
    expect(await contentOf(source, 'ipxe.efi')).toBe('ipxe');
    expect(await contentOf(source, 'images/sub/file')).toBe('inside');
    expect(await contentOf(source, 'machines/aa/boot.ipxe')).toBe('#!ipxe\n');
    expect(await contentOf(source, 'machines/aa/other')).toBeNull();
    expect(await contentOf(source, 'images/')).toBeNull();
    expect(await contentOf(source, 'sub/file')).toBeNull(); // the root mount is memory only
    expect(seen).toEqual(['aa/boot.ipxe@127.0.0.1', 'aa/other@127.0.0.1']);
  });

  it('onlyFiles and ipxeSource serve the listed names only', async () => {
    const limited = onlyFiles(dirSource(root), ['in-link']);
    expect(await contentOf(limited, 'in-link')).toBe('inside');
    expect(await contentOf(limited, 'sub/file')).toBeNull();
    const ipxe = ipxeSource('/usr/lib/ipxe');
    const efi = await ipxe('snponly.efi', client);
    expect(efi?.size).toBeGreaterThan(10_000); // Debian's ipxe package is a declared host dependency
    await efi?.close();
    expect(await ipxe('ipxe.iso', client)).toBeNull();
    // Debian's ipxe.efi links to /boot/ipxe.efi, outside the directory: a fixed name may follow it.
    const linked = await ipxe('ipxe.efi', client);
    expect(linked?.size).toBeGreaterThan(100_000);
    await linked?.close();
  });

  it('bufferFile slices without copying past the end', async () => {
    const f = bufferFile(Buffer.from('abcdef'));
    expect(f.size).toBe(6);
    expect((await f.read(4, 10)).toString()).toBe('ef');
  });
});
