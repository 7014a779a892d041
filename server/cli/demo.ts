import type { Command } from 'commander';
import { withCommonOptions, type CommonOptions } from './common.ts';

export interface DemoOptions extends CommonOptions {
  mac?: string;
  timeout: number;
}

/**
 * The whole product in one command, on a fresh Debian machine as root: make the demo image
 * (Debian + kernel + systemd, from config/images/demo/Dockerfile), build its boot artifacts,
 * start the server in a private lab with the example config, boot one VM by its MAC, show its
 * boot timeline as it happens, and clean up.
 */
export function registerDemo(program: Command): void {
  withCommonOptions(program.command('demo'))
    .description('build the demo image, serve it in a private lab and netboot one VM, showing its boot timeline (root; minutes the first time)')
    .option('--mac <mac>', 'which machine of the config to boot (default: the first)')
    .option('--timeout <seconds>', 'give up on the VM after this long', (v) => Number.parseInt(v, 10), 600)
    .action(async (options: DemoOptions) => (await import('./actions/demo.ts')).runDemo(options));
}
