/**
 * Every static C tool an initramfs may carry, compiled in one call: the container image's build
 * stage runs this, so the runtime (no compiler there) finds each one already built in
 * <tmpdir>/netboot-native/ (static-tool.ts looks there first).
 */
import { compileNbdClient } from './nbd-client.ts';
import { compileVerityHelper } from './verity-helper.ts';

export async function compileAllStaticTools(): Promise<string[]> {
  return [await compileNbdClient(), await compileVerityHelper()];
}
