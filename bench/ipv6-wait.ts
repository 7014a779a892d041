/**
 * How long iPXE waits for IPv6 before it uses netboot's DHCP answer (issue 17), side by side in
 * one run: a segment with no IPv6 router, one with a router daemon (dnsmasq RA, a ULA prefix),
 * and one with no router where netboot answers the router solicitations itself
 * (server.ipv6RouterAdvert: auto); for QEMU's iPXE ROM path (SeaBIOS + the NIC's ROM: Debian 12's
 * ipxe-qemu, and Debian 13's ROM via romfile=; e1000) and the firmware PXE path (OVMF PXE, NIC ROM off,
 * -> TFTP snponly.efi: Debian 12's /usr/lib/ipxe, and Debian 13's from scripts/setup-host.sh).
 *
 * Each case: a private lab (netboot serve in a namespace, 10.88.51.0/24, lab dnsmasq for
 * addresses, proxy DHCP), one QEMU VM (TCG), timed from QEMU's start to iPXE printing the
 * boot.ipxe URL it fetches; the VM is stopped there. Also counted: the solicitations netboot
 * answered (server log).
 *
 *   node --import tsx bench/ipv6-wait.ts              (root; BENCH_ROUNDS=1, BENCH_PATHS=rom12,rom13,pxe12,pxe13)
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BUNDLED_IPXE_DIR, HOST_IPXE_DIR } from '../server/ipxe-binaries.ts';
import { Lab } from '../server/lab/lab.ts';

const run = promisify(execFile);
const SERVER = '10.88.51.1';
const MAC = '52:54:00:88:51:01';
const QEMU_ROM_VERSION = '1.21.1+git20250501.dad20602+dfsg-1';
const QEMU_ROM_SHA256 = 'b3b799d90b87ef2d6defa925cd48cf1691a19806f08041733a4f884d4a218b17';

type RaMode = 'none' | 'daemon' | 'netboot';
interface Path {
  id: string;
  label: string;
  firmware: 'bios' | 'uefi-pxe';
  nic: 'virtio' | 'e1000';
  nicRom?: () => Promise<string>;
  ipxeDir?: string;
}

/**
 * Debian 13's ipxe-qemu ROM for e1000 (BIOS), fetched once into the temp dir and checksum-checked.
 * e1000, not virtio: this host's QEMU 7.2/SeaBIOS does not run Debian 13's virtio ROM ("No bootable device").
 */
async function debian13Rom(): Promise<string> {
  const dir = join(tmpdir(), `netboot-bench-ipxe-qemu-${QEMU_ROM_VERSION}`);
  const rom = join(dir, 'usr/share/qemu/pxe-e1000.rom');
  if (existsSync(rom)) return rom;
  await mkdir(dir, { recursive: true });
  const deb = join(dir, 'ipxe-qemu.deb');
  const url = `http://deb.debian.org/debian/pool/main/i/ipxe/ipxe-qemu_${QEMU_ROM_VERSION.replace(/\+/g, '%2B')}_all.deb`;
  await run('/usr/lib/apt/apt-helper', ['-o', 'APT::Sandbox::User=root', 'download-file', url, deb, `SHA256:${QEMU_ROM_SHA256}`]);
  if (createHash('sha256').update(await readFile(deb)).digest('hex') !== QEMU_ROM_SHA256) throw new Error(`${deb}: wrong sha256`);
  await run('dpkg-deb', ['-x', deb, dir]);
  return rom;
}

const PATHS: Path[] = [
  { id: 'rom12', label: 'iPXE ROM (e1000), Debian 12 (2019)', firmware: 'bios', nic: 'e1000' },
  { id: 'rom13', label: 'iPXE ROM (e1000), Debian 13 (2025)', firmware: 'bios', nic: 'e1000', nicRom: debian13Rom },
  { id: 'pxe12', label: 'OVMF PXE -> snponly.efi (virtio), Debian 12', firmware: 'uefi-pxe', nic: 'virtio', ipxeDir: HOST_IPXE_DIR },
  { id: 'pxe13', label: 'OVMF PXE -> snponly.efi (virtio), Debian 13', firmware: 'uefi-pxe', nic: 'virtio', ipxeDir: BUNDLED_IPXE_DIR },
];

interface Sample {
  /** QEMU start -> iPXE prints the boot.ipxe URL. */
  seconds: number;
  /**
   * iPXE's version banner -> the boot.ipxe URL: iPXE's own start, DHCP and IPv6 configuration,
   * without the firmware's part (OVMF's PXE varies by seconds from run to run under load).
   */
  configure: number;
  answered: number;
}

async function boot(path: Path, ra: RaMode, dir: string): Promise<Sample> {
  const caseDir = await mkdtemp(join(dir, `${path.id}-${ra}-`));
  const configFile = join(caseDir, 'netboot.yaml');
  await writeFile(
    configFile,
    [
      'server:',
      `  address: ${SERVER}`,
      '  httpPort: 8080',
      '  dhcp: { mode: proxy }',
      `  ipv6RouterAdvert: ${ra === 'netboot' ? 'auto' : 'off'}`,
      ...(path.ipxeDir ? [`  ipxeDir: ${path.ipxeDir}`] : []),
      '  stateDir: ./state',
      '  cacheDir: ./cache',
      'images:',
      // Never built (no such archive): the bench stops at iPXE's script fetch.
      '  none: { source: "oci-archive:/nonexistent/ipx-bench.tar" }',
      'machines:',
      `  ${MAC}: {}`,
      '',
    ].join('\n'),
  );
  const lab = await Lab.start({ configFile, logDir: caseDir, routerAdvertisements: ra === 'daemon' });
  try {
    const nicRom = path.nicRom ? await path.nicRom() : undefined;
    const started = Date.now();
    const vm = await lab.bootVm({ name: `ipx-${path.id}`, mac: MAC, firmware: path.firmware, nic: path.nic, memoryMiB: 256, ...(nicRom ? { nicRom } : {}) });
    await vm.waitFor(/iPXE \d+\.\d+/, 300_000);
    const configuring = Date.now();
    await vm.waitFor(/boot\.ipxe/, 300_000);
    const seconds = (Date.now() - started) / 1000;
    const configure = (Date.now() - configuring) / 1000;
    const log = await readFile(lab.serverLog, 'utf8');
    return { seconds, configure, answered: log.split('answered a router solicitation').length - 1 };
  } finally {
    await lab.close();
  }
}

async function main(): Promise<void> {
  const rounds = Number(process.env.BENCH_ROUNDS ?? 1);
  const wanted = (process.env.BENCH_PATHS ?? PATHS.map((p) => p.id).join(',')).split(',');
  const dir = await mkdtemp(join(tmpdir(), 'ipx-ipv6-wait-'));
  const results = new Map<string, Sample[]>();
  try {
    for (let round = 0; round < rounds; round++) {
      for (const path of PATHS.filter((p) => wanted.includes(p.id))) {
        for (const ra of ['none', 'daemon', 'netboot'] as const) {
          const sample = await boot(path, ra, dir);
          const key = `${path.id}/${ra}`;
          results.set(key, [...(results.get(key) ?? []), sample]);
          process.stderr.write(`${key}: ${sample.seconds.toFixed(1)} s to the script fetch (iPXE banner to script ${sample.configure.toFixed(1)} s), ${sample.answered} RS answered\n`);
        }
      }
    }
  } finally {
    if (!process.env.BENCH_KEEP) await rm(dir, { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const table = (title: string, pick: (x: Sample) => number) => {
    console.log(`\n${title}, seconds (median of ${rounds}; TCG, shared host)\n`);
    console.log('| path | no RA | RA daemon | no RA, netboot answers RS | no RA / daemon | netboot / daemon |');
    console.log('| --- | --- | --- | --- | --- | --- |');
    for (const path of PATHS.filter((p) => wanted.includes(p.id))) {
      const s = (ra: RaMode) => median(results.get(`${path.id}/${ra}`)!.map(pick));
      const answered = results.get(`${path.id}/netboot`)!.map((x) => x.answered).join('/');
      console.log(`| ${path.label} | ${s('none').toFixed(1)} | ${s('daemon').toFixed(1)} | ${s('netboot').toFixed(1)} (${answered} RS answered) | ${(s('none') / s('daemon')).toFixed(2)}x | ${(s('netboot') / s('daemon')).toFixed(2)}x |`);
    }
  };
  table('QEMU start -> iPXE fetches boot.ipxe', (x) => x.seconds);
  table("iPXE's banner -> boot.ipxe (iPXE's own DHCP + IPv6 configuration)", (x) => x.configure);
}

await main();
