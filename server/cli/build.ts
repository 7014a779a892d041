import type { Command } from 'commander';
import { withCommonOptions, type CommonOptions } from './common.ts';

export function registerBuild(program: Command): void {
  withCommonOptions(program.command('build'))
    .argument('[images...]', 'image names from the config (default: all)')
    .description('build the boot artifacts (kernel, initramfs, squashfs root) of the images in the config')
    .action(async (names: string[], options: CommonOptions) => (await import('./actions/build.ts')).runBuild(names, options));
}
