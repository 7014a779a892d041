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
 * With `--until userspace`, each VM boots on to userspace instead: the e2e suite's busybox image (kernel, our
 * initramfs, `root: ram`; its init prints NETBOOT-E2E-UP and powers off), built once with a private dockerd
 * into the e2e artifact cache; the boot.ipxe time is kept as a column. Paths http12/http13 (OVMF HTTP Boot ->
 * snponly.efi over HTTP) are added for this mode.
 *
 *   node --import tsx bench/ipv6-wait.ts [--until userspace]
 *     (root; BENCH_ROUNDS=1, BENCH_PATHS=rom12,rom13,pxe12,pxe13[,http12,http13], BENCH_RA=none,daemon,netboot,
 *      or BENCH_CASES=rom12/none,pxe13/netboot,... for an explicit list, run in that order each round)
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { buildImage } from '../server/app/images.ts';
import { parseConfig } from '../server/config/load.ts';
import { ImageCache } from '../server/images/cache.ts';
import { BUNDLED_IPXE_DIR, HOST_IPXE_DIR } from '../server/ipxe-binaries.ts';
import { Lab } from '../server/lab/lab.ts';
import { silentLogger } from '../server/log.ts';
import { FIXTURE_DIR } from '../test/fixtures/cache.ts';
import { busyboxImage } from '../test/fixtures/images/e2e.ts';
import { startDockerd, type Dockerd } from '../test/lab/dockerd.ts';

const run = promisify(execFile);
const SERVER = '10.88.51.1';
const MAC = '52:54:00:88:51:01';
const QEMU_ROM_VERSION = '1.21.1+git20250501.dad20602+dfsg-1';
const QEMU_ROM_SHA256 = 'b3b799d90b87ef2d6defa925cd48cf1691a19806f08041733a4f884d4a218b17';

type RaMode = 'none' | 'daemon' | 'netboot';
interface Path {
  id: string;
  label: string;
  firmware: 'bios' | 'uefi-pxe' | 'uefi-http';
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
  { id: 'http12', label: 'OVMF HTTP Boot -> snponly.efi (virtio), Debian 12', firmware: 'uefi-http', nic: 'virtio', ipxeDir: HOST_IPXE_DIR },
  { id: 'http13', label: 'OVMF HTTP Boot -> snponly.efi (virtio), Debian 13', firmware: 'uefi-http', nic: 'virtio', ipxeDir: BUNDLED_IPXE_DIR },
];

/** --until userspace: the image every VM boots, and the engine the server checks it against. */
interface Userspace {
  ref: string;
  dockerHost: string;
}
const E2E_CACHE = join(FIXTURE_DIR, 'e2e-cache');
const USERSPACE_UP = /NETBOOT-E2E-UP /;
const imageEntry = (ref: string) => ({ source: `docker:${ref}`, cmdline: 'console=ttyS0', root: 'ram' });

/** Builds the busybox image into the e2e cache (or finds it there), so every lab's server starts ready. */
async function prepareUserspace(dockerd: Dockerd): Promise<Userspace> {
  const ref = await busyboxImage(dockerd);
  const parsed = parseConfig(stringify({ images: { bb: imageEntry(ref) } }), '/virtual/netboot.yaml');
  await buildImage(new ImageCache({ cacheDir: E2E_CACHE, log: silentLogger }), parsed.images.get('bb')!, silentLogger, { docker: dockerd.docker });
  return { ref, dockerHost: dockerd.host };
}

interface Sample {
  /** QEMU start -> iPXE prints the boot.ipxe URL. */
  seconds: number;
  /**
   * iPXE's version banner -> the boot.ipxe URL: iPXE's own start, DHCP and IPv6 configuration,
   * without the firmware's part (OVMF's PXE varies by seconds from run to run under load).
   */
  configure: number;
  answered: number;
  /** --until userspace: QEMU start -> the image's NETBOOT-E2E-UP line. */
  userspace?: number;
}

async function boot(path: Path, ra: RaMode, dir: string, userspace: Userspace | null): Promise<Sample> {
  const caseDir = await mkdtemp(join(dir, `${path.id}-${ra}-`));
  const configFile = join(caseDir, 'netboot.yaml');
  await writeFile(
    configFile,
    stringify({
      server: {
        address: SERVER,
        httpPort: 8080,
        dhcp: { mode: 'proxy' },
        ipv6RouterAdvert: ra === 'netboot' ? 'auto' : 'off',
        ...(path.ipxeDir ? { ipxeDir: path.ipxeDir } : {}),
        stateDir: './state',
        cacheDir: userspace ? E2E_CACHE : './cache',
        ...(userspace ? { rebootDelay: 0, imageCheckSeconds: 3600 } : {}),
      },
      // Without --until userspace the image is never built (no such archive): the bench stops at iPXE's script fetch.
      images: { bb: userspace ? imageEntry(userspace.ref) : { source: 'oci-archive:/nonexistent/ipx-bench.tar' } },
      machines: { [MAC]: { image: 'bb' } },
    }),
  );
  const lab = await Lab.start({ configFile, logDir: caseDir, routerAdvertisements: ra === 'daemon', ...(userspace ? { env: { DOCKER_HOST: userspace.dockerHost } } : {}) });
  try {
    const nicRom = path.nicRom ? await path.nicRom() : undefined;
    const started = Date.now();
    const vm = await lab.bootVm({ name: `ipx-${path.id}`, mac: MAC, firmware: path.firmware, nic: path.nic, memoryMiB: userspace ? 512 : 256, ...(nicRom ? { nicRom } : {}) });
    await vm.waitFor(/iPXE \d+\.\d+/, 300_000);
    const configuring = Date.now();
    await vm.waitFor(/boot\.ipxe/, 300_000);
    const seconds = (Date.now() - started) / 1000;
    const configure = (Date.now() - configuring) / 1000;
    if (userspace) await vm.waitFor(USERSPACE_UP, 600_000);
    const up = (Date.now() - started) / 1000;
    const log = await readFile(lab.serverLog, 'utf8');
    return { seconds, configure, answered: log.split('answered a router solicitation').length - 1, ...(userspace ? { userspace: up } : {}) };
  } finally {
    await lab.close();
  }
}

async function main(): Promise<void> {
  const untilArg = process.argv.indexOf('--until');
  const until = untilArg > 0 ? process.argv[untilArg + 1] : 'script';
  if (until !== 'script' && until !== 'userspace') throw new Error(`--until script|userspace, not ${until}`);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 1);
  const defaultPaths = PATHS.filter((p) => until === 'userspace' || !p.id.startsWith('http')).map((p) => p.id);
  const wanted = (process.env.BENCH_PATHS ?? defaultPaths.join(',')).split(',');
  const raModes = (process.env.BENCH_RA ?? 'none,daemon,netboot').split(',') as RaMode[];
  const cases = (process.env.BENCH_CASES?.split(',') ?? PATHS.filter((p) => wanted.includes(p.id)).flatMap((p) => raModes.map((ra) => `${p.id}/${ra}`))).map((key) => {
    const [id, ra] = key.split('/') as [string, RaMode];
    const path = PATHS.find((p) => p.id === id);
    if (!path || !['none', 'daemon', 'netboot'].includes(ra)) throw new Error(`unknown case ${key} (path/none|daemon|netboot)`);
    return { key, path, ra };
  });
  const dir = await mkdtemp(join(tmpdir(), 'ipx-ipv6-wait-'));
  const results = new Map<string, Sample[]>();
  let dockerd: Dockerd | null = null;
  try {
    if (until === 'userspace') dockerd = await startDockerd();
    const userspace = dockerd ? await prepareUserspace(dockerd) : null;
    for (let round = 0; round < rounds; round++) {
      for (const { key, path, ra } of cases) {
        const sample = await boot(path, ra, dir, userspace);
        results.set(key, [...(results.get(key) ?? []), sample]);
        const up = sample.userspace === undefined ? '' : `, ${sample.userspace.toFixed(1)} s to userspace`;
        process.stderr.write(`${key}: ${sample.seconds.toFixed(1)} s to the script fetch (iPXE banner to script ${sample.configure.toFixed(1)} s)${up}, ${sample.answered} RS answered\n`);
      }
    }
  } finally {
    await dockerd?.stop().catch(() => undefined);
    if (!process.env.BENCH_KEEP) await rm(dir, { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const paths = PATHS.filter((p) => cases.some((c) => c.path === p));
  const value = (id: string, ra: RaMode, pick: (x: Sample) => number | undefined) => {
    const xs = (results.get(`${id}/${ra}`) ?? []).map(pick).filter((x): x is number => x !== undefined);
    return xs.length ? median(xs) : null;
  };
  const cell = (x: number | null) => (x === null ? '-' : x.toFixed(1));
  const ratio = (a: number | null, b: number | null) => (a === null || b === null ? '-' : `${(a / b).toFixed(2)}x`);
  const table = (title: string, pick: (x: Sample) => number | undefined) => {
    console.log(`\n${title}, seconds (median of ${rounds}; TCG, shared host)\n`);
    console.log('| path | no RA | RA daemon | no RA, netboot answers RS | no RA / daemon | netboot / daemon |');
    console.log('| --- | --- | --- | --- | --- | --- |');
    for (const path of paths) {
      const s = (ra: RaMode) => value(path.id, ra, pick);
      const answered = (results.get(`${path.id}/netboot`) ?? []).map((x) => x.answered).join('/');
      console.log(`| ${path.label} | ${cell(s('none'))} | ${cell(s('daemon'))} | ${cell(s('netboot'))}${answered ? ` (${answered} RS answered)` : ''} | ${ratio(s('none'), s('daemon'))} | ${ratio(s('netboot'), s('daemon'))} |`);
    }
  };
  if (until === 'userspace') table('QEMU start -> userspace (NETBOOT-E2E-UP, busybox image)', (x) => x.userspace);
  table('QEMU start -> iPXE fetches boot.ipxe', (x) => x.seconds);
  table("iPXE's banner -> boot.ipxe (iPXE's own DHCP + IPv6 configuration)", (x) => x.configure);
  // Debian 13's iPXE against Debian 12's, path by path, for each RA mode both were run with.
  const pairs = [['rom12', 'rom13'], ['pxe12', 'pxe13'], ['http12', 'http13']].filter(([a, b]) => paths.some((p) => p.id === a) && paths.some((p) => p.id === b));
  if (pairs.length) {
    const pick = until === 'userspace' ? (x: Sample) => x.userspace : (x: Sample) => x.seconds;
    console.log(`\nDebian 13's iPXE vs Debian 12's, QEMU start -> ${until === 'userspace' ? 'userspace' : 'boot.ipxe'}, seconds\n`);
    console.log('| path | RA | Debian 12 | Debian 13 | 13 / 12 |');
    console.log('| --- | --- | --- | --- | --- |');
    for (const [old, neu] of pairs) {
      for (const ra of ['none', 'daemon', 'netboot'] as const) {
        const a = value(old!, ra, pick);
        const b = value(neu!, ra, pick);
        if (a !== null && b !== null) console.log(`| ${old!.replace(/12$/, '')} | ${ra} | ${cell(a)} | ${cell(b)} | ${ratio(b, a)} |`);
      }
    }
  }
}

await main();
