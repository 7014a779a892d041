import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LayerSourceError, readMachineTree } from '../../server/layers/tree.ts';
import { tempDir } from '../http/fixtures.ts';

const tmp = tempDir('netboot-tree-');
afterAll(() => tmp.cleanup());

function folder(name: string): string {
  const root = join(tmp.path, name);
  mkdirSync(join(root, 'etc'), { recursive: true });
  writeFileSync(join(root, 'etc/motd'), 'hi\n');
  return root;
}

describe('readMachineTree', () => {
  it('copies symlinks that stay inside the folder, never following them', async () => {
    const root = folder('ok');
    symlinkSync('../usr/share/zoneinfo/UTC', join(root, 'etc/localtime'));
    symlinkSync('motd', join(root, 'etc/motd.link'));
    const tree = await readMachineTree(root);
    expect(tree.map((e) => [e.path, e.type, e.target])).toEqual([
      ['etc', 'dir', undefined],
      ['etc/localtime', 'symlink', '../usr/share/zoneinfo/UTC'],
      ['etc/motd', 'file', undefined],
      ['etc/motd.link', 'symlink', 'motd'],
    ]);
  });

  it('refuses symlinks pointing outside the folder, naming the link', async () => {
    const up = folder('up');
    symlinkSync('../../../etc/shadow', join(up, 'etc/evil'));
    await expect(readMachineTree(up)).rejects.toThrow(/etc\/evil: symlink to "..\/..\/..\/etc\/shadow" points outside the machine folder/);
    const abs = folder('abs');
    symlinkSync('/etc/shadow', join(abs, 'etc/evil'));
    await expect(readMachineTree(abs)).rejects.toBeInstanceOf(LayerSourceError);
  });

  it('bounds file sizes, total size and entry count', async () => {
    const root = folder('big');
    writeFileSync(join(root, 'etc/blob'), Buffer.alloc(2048));
    await expect(readMachineTree(root, { maxFileBytes: 1024, maxTotalBytes: 1 << 20, maxEntries: 100 })).rejects.toThrow(/2048 bytes, over the 1024-byte limit/);
    await expect(readMachineTree(root, { maxFileBytes: 4096, maxTotalBytes: 1024, maxEntries: 100 })).rejects.toThrow(/exceed 1024 bytes in total/);
    await expect(readMachineTree(root, { maxFileBytes: 4096, maxTotalBytes: 1 << 20, maxEntries: 2 })).rejects.toThrow(/more than 2 entries/);
  });
});
