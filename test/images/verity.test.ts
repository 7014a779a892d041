import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { verityLevels, writeVerityTree } from '../../server/images/verity.ts';

const dir = mkdtempSync(join(tmpdir(), 'verity-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** veritysetup's root hash and tree for the same data and salt. */
function veritysetup(data: string, salt: Buffer): { rootHash: string; tree: Buffer } {
  const tree = `${data}.vs`;
  const out = execFileSync('veritysetup', ['format', '--no-superblock', `--salt=${salt.toString('hex')}`, '--data-block-size=4096', '--hash-block-size=4096', data, tree], { encoding: 'utf8' });
  const rootHash = /Root hash:\s*([0-9a-f]{64})/.exec(out)?.[1];
  if (!rootHash) throw new Error(`no root hash in veritysetup's output: ${out}`);
  return { rootHash, tree: readFileSync(tree) };
}

describe('dm-verity hash tree', () => {
  it('counts levels as dm-verity does', () => {
    expect(verityLevels(1)).toBe(0);
    expect(verityLevels(2)).toBe(1);
    expect(verityLevels(128)).toBe(1);
    expect(verityLevels(129)).toBe(2);
    expect(verityLevels(128 * 128)).toBe(2);
    expect(verityLevels(128 * 128 + 1)).toBe(3);
  });

  // 1 block (no level), 128 (one full hash block), 129 (two levels), 16,500 (three levels, partial blocks).
  it.each([1, 128, 129, 16_500])('matches veritysetup byte for byte for %i data blocks', async (blocks) => {
    const data = join(dir, `data-${blocks}`);
    writeFileSync(data, randomBytes(blocks * 4096));
    const salt = randomBytes(32);
    const ours = await writeVerityTree(data, `${data}.verity`, salt);
    const theirs = veritysetup(data, salt);
    expect(ours).toMatchObject({ dataBlocks: blocks, rootHash: theirs.rootHash, salt: salt.toString('hex'), blockSize: 4096, algorithm: 'sha256' });
    if (blocks > 1) expect(readFileSync(`${data}.verity`).equals(theirs.tree)).toBe(true);
  });

  it('a changed byte changes the root hash', async () => {
    const data = join(dir, 'flip');
    const bytes = randomBytes(300 * 4096);
    writeFileSync(data, bytes);
    const salt = Buffer.alloc(32, 7);
    const before = await writeVerityTree(data, `${data}.verity`, salt);
    bytes[200 * 4096 + 17]! ^= 1;
    writeFileSync(data, bytes);
    const after = await writeVerityTree(data, `${data}.verity`, salt);
    expect(after!.rootHash).not.toBe(before!.rootHash);
  });

  it('declines files it cannot cover block for block', async () => {
    writeFileSync(join(dir, 'odd'), randomBytes(4096 + 10));
    writeFileSync(join(dir, 'empty'), '');
    expect(await writeVerityTree(join(dir, 'odd'), join(dir, 'odd.verity'), Buffer.alloc(32))).toBeNull();
    expect(await writeVerityTree(join(dir, 'empty'), join(dir, 'empty.verity'), Buffer.alloc(32))).toBeNull();
  });
});
