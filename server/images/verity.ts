/**
 * The dm-verity hash tree of an image's rootfs.squashfs (artifact `rootfs.verity`), so a
 * machine that keeps the root on its disk (config `disk: cache`) has every block it reads
 * checked by the kernel against the root hash from the manifest, instead of hashing the whole
 * file before each boot.
 *
 * The layout is dm-verity's format 1 as `veritysetup format --no-superblock` writes it
 * (drivers/md/dm-verity-target.c): sha256 over salt + block, 4096-byte data and hash blocks,
 * the levels stored top first, unused digest slots zero. test/images/verity.test.ts compares
 * the bytes with veritysetup's.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';

export const VERITY_BLOCK_SIZE = 4096;
const DIGEST_SIZE = 32;
const DIGESTS_PER_BLOCK = VERITY_BLOCK_SIZE / DIGEST_SIZE;

export interface VerityInfo {
  /** Format 1, sha256, the same size for data and hash blocks. */
  algorithm: 'sha256';
  blockSize: number;
  /** Data blocks covered: the whole file (its size is a multiple of blockSize). */
  dataBlocks: number;
  salt: string;
  rootHash: string;
}

function digest(salt: Buffer, block: Buffer): Buffer {
  return createHash('sha256').update(salt).update(block).digest();
}

/** Packs digests into zero-padded hash blocks. */
function packLevel(digests: Buffer[]): Buffer {
  const blocks = Math.ceil(digests.length / DIGESTS_PER_BLOCK);
  const level = Buffer.alloc(blocks * VERITY_BLOCK_SIZE);
  digests.forEach((d, i) => d.copy(level, i * DIGEST_SIZE));
  return level;
}

function blockDigests(salt: Buffer, level: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let offset = 0; offset < level.length; offset += VERITY_BLOCK_SIZE) out.push(digest(salt, level.subarray(offset, offset + VERITY_BLOCK_SIZE)));
  return out;
}

/** How many hash levels dm-verity expects for `dataBlocks` (its own loop, verbatim in effect). */
export function verityLevels(dataBlocks: number): number {
  let levels = 0;
  while (levels * 7 < 64 && Math.floor((dataBlocks - 1) / DIGESTS_PER_BLOCK ** levels) > 0) levels++;
  return levels;
}

/**
 * Builds the tree of `dataPath` into `treePath` and returns what the kernel's table needs.
 * Null when the file cannot be covered block for block (empty, or not a multiple of 4096
 * bytes): machines then check the whole file's sha256 instead.
 */
export async function writeVerityTree(dataPath: string, treePath: string, salt: Buffer): Promise<VerityInfo | null> {
  const size = (await stat(dataPath)).size;
  if (size === 0 || size % VERITY_BLOCK_SIZE !== 0) return null;
  const leaves: Buffer[] = [];
  let pending: Buffer = Buffer.alloc(0);
  for await (const chunk of createReadStream(dataPath, { highWaterMark: 1 << 20 })) {
    pending = pending.length ? Buffer.concat([pending, chunk as Buffer]) : (chunk as Buffer);
    let offset = 0;
    for (; offset + VERITY_BLOCK_SIZE <= pending.length; offset += VERITY_BLOCK_SIZE) leaves.push(digest(salt, pending.subarray(offset, offset + VERITY_BLOCK_SIZE)));
    pending = pending.subarray(offset);
  }
  const dataBlocks = leaves.length;
  const levels = verityLevels(dataBlocks);
  // levels[0] holds the data blocks' digests; each next level the digests of the one below.
  const stored: Buffer[] = [];
  let digests = leaves;
  for (let i = 0; i < levels; i++) {
    const level = packLevel(digests);
    stored.push(level);
    digests = blockDigests(salt, level);
  }
  // No level at all (a single data block): the root is that block's digest.
  const rootHash = levels === 0 ? leaves[0]! : digests[0]!;
  await writeFile(treePath, Buffer.concat(stored.reverse()));
  return { algorithm: 'sha256', blockSize: VERITY_BLOCK_SIZE, dataBlocks, salt: salt.toString('hex'), rootHash: rootHash.toString('hex') };
}
