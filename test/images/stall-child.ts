/**
 * A build that stalls, run the way `netboot build` runs it (the stall guard armed):
 * `stall-child.ts CACHE_DIR OCI_ARCHIVE`. The makeInitrd hook never settles and holds nothing
 * open, so once the squashfs is written the event loop runs dry mid-build, with the temp dir
 * and the lock in place: the moment Node would exit 13 saying nothing.
 */
import { ImageCache } from '../../server/images/cache.ts';
import { guardAgainstStalledBuilds } from '../../server/images/stall-guard.ts';
import { silentLogger } from '../../server/log.ts';

const [cacheDir, archive] = process.argv.slice(2);
if (!cacheDir || !archive) {
  process.stderr.write('usage: stall-child.ts CACHE_DIR OCI_ARCHIVE\n');
  process.exit(2);
}
const cache = new ImageCache({ cacheDir, log: silentLogger });
const guard = guardAgainstStalledBuilds(cache, 1);
guard.building('stalled');
await cache.build(
  { name: 'stalled', source: `oci-archive:${archive}`, cmdline: '', root: 'ram', initramfs: 'image', init: '/sbin/init', compression: 'zstd', platform: 'linux/amd64' },
  { makeInitrd: () => new Promise<void>(() => {}) },
);
process.stdout.write('the build finished (it should have stalled)\n');
