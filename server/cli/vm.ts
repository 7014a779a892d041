import { Option, type Command } from 'commander';
import { withCommonOptions, type CommonOptions } from './common.ts';

export interface VmCliOptions extends CommonOptions {
  mac: string;
  server?: string;
  lab?: boolean;
  nic: 'virtio' | 'e1000';
  uefi?: boolean;
  firmware?: 'bios' | 'uefi' | 'uefi-pxe' | 'uefi-http';
  ipv6Router: boolean;
  expect?: string;
  timeout: number;
  memory: number;
  disk: string[];
}

export function registerVm(program: Command): void {
  withCommonOptions(program.command('vm'))
    .description('boot a QEMU VM over the network and stream its console: against a running server, or in a private lab it creates')
    .requiredOption('--mac <mac>', "the VM's MAC (which machine of the config it is)")
    .option('--server <url>', 'a running netboot server, e.g. http://192.168.1.5:8080 (the VM uses QEMU user networking)')
    .option('--lab', 'create a private lab (network namespace, netboot serve with --config) and boot the VM in it (root)')
    .addOption(new Option('--nic <model>', 'NIC model').choices(['virtio', 'e1000']).default('virtio'))
    .option('--uefi', 'boot with OVMF (UEFI) instead of SeaBIOS (same as --firmware uefi)')
    .addOption(
      new Option('--firmware <kind>', "bios: SeaBIOS + the NIC's iPXE ROM; uefi: OVMF + the NIC's iPXE; uefi-pxe / uefi-http: OVMF's own PXE / HTTP Boot, NIC ROM off, as on real hardware")
        .choices(['bios', 'uefi', 'uefi-pxe', 'uefi-http'])
        .conflicts('uefi'),
    )
    .option('--no-ipv6-router', 'with --lab: no IPv6 router advertisement daemon on the segment (like most IPv4-only networks)')
    .option('--expect <text>', 'exit 0 as soon as the console prints this text')
    .option('--timeout <seconds>', 'give up after this long', (v) => Number.parseInt(v, 10), 300)
    .option('--memory <MiB>', 'VM memory', (v) => Number.parseInt(v, 10), 1024)
    .option('--disk <file>', 'attach this raw disk image as a virtio disk (repeatable), e.g. for machines with disk: in the config', (v: string, all: string[]) => [...all, v], [])
    .addHelpText(
      'after',
      `
Examples:
  netboot vm --lab --mac 52:54:00:12:34:56 --expect 'login:'        # private lab, example config
  netboot vm --lab --firmware uefi-pxe --no-ipv6-router --mac 52:54:00:12:34:56   # firmware PXE, no IPv6 router
  netboot vm --server http://10.0.0.5:8080 --mac 52:54:00:12:34:56 --expect 'NETBOOT-OK' --timeout 600
  truncate -s 8G ws1.img && netboot vm --lab --mac 52:54:00:12:34:56 --disk ws1.img   # a machine with a disk
Exit codes: 0 expected text seen (or VM powered off without --expect), 5 timeout, 1 failure.`,
    )
    .action(async (options: VmCliOptions) => (await import('./actions/vm.ts')).runVm(options));
}
