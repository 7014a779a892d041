import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { normalizeMac } from '../../config/mac.ts';
import { Lab } from '../../lab/lab.ts';
import { Vm, VmError } from '../../lab/vm.ts';
import { EXIT } from '../common.ts';
import type { VmCliOptions } from '../vm.ts';

export async function runVm(options: VmCliOptions): Promise<void> {
  const mac = normalizeMac(options.mac);
  if (!mac) {
    process.stderr.write(`--mac: "${options.mac}" is not a MAC address (e.g. 52:54:00:12:34:56)\n`);
    process.exit(EXIT.usage);
  }
  if (!options.server === !options.lab) {
    process.stderr.write('give exactly one of --server URL or --lab\n');
    process.exit(EXIT.usage);
  }
  for (const disk of options.disk ?? []) {
    if (!existsSync(disk)) {
      process.stderr.write(`--disk ${disk}: no such file (create an empty one with: truncate -s 8G ${disk})\n`);
      process.exit(EXIT.usage);
    }
  }
  const logDir = await mkdtemp(join(tmpdir(), 'netboot-vm-'));
  const vmOptions = {
    name: `vm-${mac.replace(/:/g, '').slice(-6)}`,
    mac,
    nic: options.nic,
    memoryMiB: options.memory,
    disks: options.disk,
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
      if (!exited) throw new VmError(`${vmOptions.name}: still running after ${options.timeout} s`, vm, 'timeout');
    }
    await cleanup();
    process.exit(EXIT.ok);
  } catch (err) {
    process.stderr.write(`\nnetboot vm: ${(err as Error).message}\n`);
    await cleanup();
    process.exit(err instanceof VmError && err.kind === 'timeout' ? EXIT.timeout : EXIT.failure);
  }
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
