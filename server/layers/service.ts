import { join } from 'node:path';
import type { AccountFiles } from './accounts.ts';
import { readSquashfsFile } from '../images/squashfs-reader.ts';
import { loadInstallKey } from './machine-state.ts';
import { LayerSigner } from './signing.ts';

/**
 * What the layer route needs that outlives one request: the install key, the URL signer and
 * the image account files (read from a squashfs with rdsquashfs, so cached per squashfs path;
 * image ids are immutable, so the cache never goes stale).
 */
export class LayerService {
  readonly #accounts = new Map<string, Promise<AccountFiles>>();

  private constructor(
    readonly installKey: Buffer,
    readonly signer: LayerSigner,
    readonly stateDir: string,
  ) {}

  static async open(stateDir: string, now: () => number = Date.now): Promise<LayerService> {
    const key = await loadInstallKey(stateDir);
    return new LayerService(key, new LayerSigner(key, now, join(stateDir, 'used-layer-urls.jsonl')), stateDir);
  }

  imageAccounts(squashfsPath: string): Promise<AccountFiles> {
    let promise = this.#accounts.get(squashfsPath);
    if (!promise) {
      promise = readAccounts(squashfsPath);
      promise.catch(() => this.#accounts.delete(squashfsPath));
      this.#accounts.set(squashfsPath, promise);
      if (this.#accounts.size > 32) this.#accounts.delete(this.#accounts.keys().next().value!);
    }
    return promise;
  }
}

async function readAccounts(squashfs: string): Promise<AccountFiles> {
  const optional = (path: string) => readSquashfsFile(squashfs, path).then((b) => b.toString('utf8'), () => undefined);
  const [passwd, group, shadow, gshadow] = await Promise.all([
    readSquashfsFile(squashfs, '/etc/passwd').then((b) => b.toString('utf8')),
    readSquashfsFile(squashfs, '/etc/group').then((b) => b.toString('utf8')),
    optional('/etc/shadow'),
    optional('/etc/gshadow'),
  ]);
  return { passwd, group, shadow, gshadow };
}
