import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { normalizeMac } from '../config/mac.ts';
import { Lab } from '../lab/lab.ts';
import { Vm, VmError } from '../lab/vm.ts';
import { EXIT, withCommonOptions, type CommonOptions } from './common.ts';

interface VmCliOptions extends CommonOptions {
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
    .addHelpText(
      'after',
      `
Examples:
  netboot vm --lab --mac 52:54:00:12:34:56 --expect 'login:'        # private lab, example config
  netboot vm --lab --firmware uefi-pxe --no-ipv6-router --mac 52:54:00:12:34:56   # firmware PXE, no IPv6 router
  netboot vm --server http://10.0.0.5:8080 --mac 52:54:00:12:34:56 --expect 'NETBOOT-OK' --timeout 600
Exit codes: 0 expected text seen (or VM powered off without --expect), 5 timeout, 1 failure.`,
    )
    .action(async (options: VmCliOptions) => {
      const mac = normalizeMac(options.mac);
      if (!mac) {
        process.stderr.write(`--mac: "${options.mac}" is not a MAC address (e.g. 52:54:00:12:34:56)\n`);
        process.exit(EXIT.usage);
      }
      if (!options.server === !options.lab) {
        process.stderr.write('give exactly one of --server URL or --lab\n');
        process.exit(EXIT.usage);
      }
      const logDir = await mkdtemp(join(tmpdir(), 'netboot-vm-'));
      const vmOptions = {
        name: `vm-${mac.replace(/:/g, '').slice(-6)}`,
        mac,
        nic: options.nic,
        memoryMiB: options.memory,
        firmware: options.firmware ?? (options.uefi ? ('uefi' as const) : ('bios' as const)),
        logDir,
        echo: process.stdout,
      };
      let lab: Lab | null = null;
      let vm: Vm | null = null;
      const cleanup = async () => {
        await vm?.stop();
        await lab?.close();
      };
      process.once('SIGINT', () => void cleanup().then(() => process.exit(EXIT.failure)));
      process.once('SIGTERM', () => void cleanup().then(() => process.exit(EXIT.failure)));
      try {
        if (options.lab) {
          process.stderr.write(`netboot vm: starting a private lab with ${options.config} (logs: ${logDir})\n`);
          lab = await Lab.start({ configFile: options.config, logDir, routerAdvertisements: options.ipv6Router });
          vm = await lab.bootVm(vmOptions);
        } else {
          const server = options.server!.replace(/\/+$/, '');
          vm = new Vm(null, { ...vmOptions, userNetBootUrl: `${userNetUrl(server)}/boot.ipxe` });
          await vm.start();
        }
        if (options.expect) {
          await vm.waitFor(new RegExp(escapeRegExp(options.expect)), options.timeout * 1000);
          process.stderr.write(`\nnetboot vm: saw "${options.expect}"\n`);
        } else {
          const exited = await Promise.race([vm.exited.then(() => true), sleep(options.timeout * 1000).then(() => false)]);
          if (!exited) throw new VmError(`${vmOptions.name}: still running after ${options.timeout} s`, vm);
        }
        await cleanup();
        process.exit(EXIT.ok);
      } catch (err) {
        process.stderr.write(`\nnetboot vm: ${(err as Error).message}\n`);
        await cleanup();
        process.exit(err instanceof VmError && /within|still running/.test(err.message) ? EXIT.timeout : EXIT.failure);
      }
    });
}

/** Under QEMU user networking the host is 10.0.2.2: a server on the host's loopback is reached there. */
function userNetUrl(server: string): string {
  return server.replace(/^http:\/\/(localhost|127\.0\.0\.1)(?=[:/]|$)/, 'http://10.0.2.2');
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
