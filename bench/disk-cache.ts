/**
 * bench/disk-cache (issue 19): a machine with `disk: { cache: true }` against diskless ones, in
 * one lab and one run: the same Docker image booted with its root in RAM (`root: ram`),
 * streamed over NBD (`root: nbd`), and read from the machine's disk cache (its second and
 * later boots; the first prepares the disk and fills the cache and is shown as round 0).
 * Per boot: seconds from QEMU's start to /init, to switch_root and to the image's marker, and
 * the bytes the server sent; medians and ratios to the ram boot.
 *
 *   node --import tsx bench/disk-cache.ts [--rounds 2] [--images debian,busybox]
 *
 * Needs root, QEMU and the e2e fixtures (built once, then cached). Not part of `npm test`.
 */
import { runBootComparison, type ImageKind } from './lib/boot-compare.ts';

function option(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const rounds = Number(option('rounds') ?? 2);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds ${option('rounds')}: expected a whole number >= 1`);
const images = (option('images') ?? 'debian').split(',');
for (const image of images) if (image !== 'debian' && image !== 'busybox') throw new Error(`--images: unknown image ${image} (debian, busybox)`);

await runBootComparison({ rounds, images: images as ImageKind[], modes: ['ram', 'nbd', 'disk'], title: 'bench/disk-cache' });
