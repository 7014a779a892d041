import type { Command } from 'commander';
import { withCommonOptions, type CommonOptions } from './common.ts';

export interface GcOptions extends CommonOptions {
  keep: number;
}

export function registerGc(program: Command): void {
  withCommonOptions(program.command('gc'))
    .description("remove built image ids that no image in the config points at (each image's current id is kept, and ids a running server streams over NBD)")
    .option('--keep <n>', 'also keep the N most recently built ids', (v) => Number.parseInt(v, 10), 2)
    .action(async (options: GcOptions) => (await import('./actions/gc.ts')).runGc(options));
}
