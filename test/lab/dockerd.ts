import { join } from 'node:path';
import { startDockerd as startPrivateDockerd, type Dockerd } from '../../server/lab/dockerd.ts';
import { FIXTURE_DIR } from '../fixtures/cache.ts';

export type { Dockerd } from '../../server/lab/dockerd.ts';

/** Images built by earlier test runs survive here (vfs storage: several GB). */
export const DOCKERD_DATA_ROOT = join(FIXTURE_DIR, 'dockerd');

/** The tests' private Docker engine (see server/lab/dockerd.ts). */
export function startDockerd(options: { dataRoot?: string; lockTimeoutMs?: number } = {}): Promise<Dockerd> {
  return startPrivateDockerd({ ...options, dataRoot: options.dataRoot ?? DOCKERD_DATA_ROOT });
}
