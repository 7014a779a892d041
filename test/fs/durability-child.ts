/**
 * Writes every kind of state netboot keeps, once, so that durability.test.ts can watch the
 * syscalls under strace: `durability-child.ts WORK_DIR OCI_ARCHIVE`. Prints nothing on success.
 */
import { join } from 'node:path';
import { LeaseStore } from '../../server/dhcp/leases.ts';
import { ImageCache } from '../../server/images/cache.ts';
import { hostKeysFor, loadInstallKey } from '../../server/layers/machine-state.ts';
import { LayerSigner } from '../../server/layers/signing.ts';
import { silentLogger } from '../../server/log.ts';

const [work, archive] = process.argv.slice(2);
if (!work || !archive) {
  process.stderr.write('usage: durability-child.ts WORK_DIR OCI_ARCHIVE\n');
  process.exit(2);
}
const MAC = '52:54:00:14:00:01';

// An image build and its current-id pointer.
const cache = new ImageCache({ cacheDir: join(work, 'cache'), log: silentLogger });
await cache.build({ name: 'durable', source: `oci-archive:${archive}`, cmdline: '', root: 'ram', initramfs: 'image', init: '/sbin/init', compression: 'zstd', platform: 'linux/amd64' });

// A DHCP lease.
const leases = await LeaseStore.open(join(work, 'state', 'leases.json'));
const pool = { start: '10.88.73.10', end: '10.88.73.20', excluded: new Set<string>() };
leases.offer(MAC, 1, pool, undefined, undefined);
if (!leases.bind(MAC, '10.88.73.10', 3600, pool, undefined)) throw new Error('bind failed');
await leases.flush();

// The used-URL ledger.
const signer = new LayerSigner(Buffer.alloc(32, 7), Date.now, join(work, 'state', 'used-layer-urls.jsonl'));
const grant = signer.sign(MAC, 'boot-1', 'image', 60);
const redemption = signer.redeem(MAC, { boot: grant.boot, image: grant.image, exp: String(grant.exp), sig: grant.sig });
if (!redemption.ok) throw new Error(redemption.reason);
const failed = await redemption.commit();
if (failed) throw failed;

// The install key and a machine's SSH host keys.
const key = await loadInstallKey(join(work, 'keys'));
if (key.length !== 32) throw new Error('short key');
await hostKeysFor(join(work, 'keys'), MAC, { create: true, known: true });
