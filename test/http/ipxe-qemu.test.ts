import { execFile, spawn } from 'node:child_process';
import { get as httpGet, type ClientRequest } from 'node:http';
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync, chmodSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { debianKernelFixture } from '../initramfs/fixture.ts';
import { addImage } from './fixtures.ts';
import { runFuzz, type FuzzResult } from './fuzz-requests.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from './setup.ts';

/**
 * The rendered scripts run by a real iPXE (QEMU's NIC ROM) against the real server: DHCP
 * comes from QEMU's user-mode network stack with restrict=on (the guest reaches nothing but
 * the one forwarded address, 10.0.2.100:80, which `busybox nc` connects to our server on
 * 127.0.0.1), the kernel is a real Debian kernel and the initrd a tiny cpio whose /init
 * prints the command line it got and powers off.
 */
const run = promisify(execFile);
let h: Harness;
/** A second machine the fuzzer aims at, so MAC's timeline holds only the VM's own requests. */
const FUZZED_MAC = '52:54:00:aa:bb:14';

beforeAll(async () => {
  h = await harness(baseYaml({ server: '', machines: `  ${FUZZED_MAC}:\n    hostname: fuzzed\n` }).replace('address: 127.0.0.1\n  httpPort: 8080', 'address: 10.0.2.100\n  httpPort: 80'));
  const kernel = await debianKernelFixture();
  const image = addImage(h.store, 'demo');
  copyFileSync(kernel.vmlinuz, h.store.artifactPath(image.id, 'vmlinuz')!);
  // The manifest's digest no longer matches the replaced files: fine, the ETag falls back.
  writeFileSync(h.store.artifactPath(image.id, 'initrd.img')!, await markerInitrd(join(h.dir, 'initrd-root')));
  await h.app.listen({ host: '127.0.0.1', port: 0 });
}, 600_000);
afterAll(async () => h?.close());

async function markerInitrd(root: string): Promise<Buffer> {
  for (const dir of ['bin', 'proc', 'dev']) mkdirSync(join(root, dir), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  symlinkSync('busybox', join(root, 'bin/sh'));
  writeFileSync(
    join(root, 'init'),
    '#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho "NETBOOT-CMDLINE: $(/bin/busybox cat /proc/cmdline)"\n/bin/busybox poweroff -f\n',
  );
  chmodSync(join(root, 'init'), 0o755);
  await run('mknod', [join(root, 'dev/console'), 'c', '5', '1']);
  const { stdout } = await run('sh', ['-c', 'cd "$1" && find . | sort | cpio -o -H newc --quiet', 'sh', root], { encoding: 'buffer', maxBuffer: 64 << 20 });
  return stdout;
}

function bootInQemu(port: number, timeoutMs: number, firmware: 'bios' | 'uefi'): Promise<string> {
  const uefi: string[] = [];
  if (firmware === 'uefi') {
    const vars = join(h.dir, 'OVMF_VARS.fd');
    copyFileSync('/usr/share/OVMF/OVMF_VARS_4M.fd', vars);
    uefi.push('-drive', 'if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd', '-drive', `if=pflash,format=raw,file=${vars}`);
  }
  return new Promise((resolve) => {
    const qemu = spawn('qemu-system-x86_64', [
      '-accel', 'tcg', '-m', '512', '-nographic', '-no-reboot', ...uefi,
      ...(firmware === 'bios' ? ['-boot', 'n'] : []),
      '-netdev', `user,id=n0,restrict=on,ipv6=off,bootfile=http://10.0.2.100/boot.ipxe,guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 ${port}`,
      '-device', `virtio-net-pci,netdev=n0,mac=${MAC}${firmware === 'uefi' ? ',bootindex=1' : ''}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    qemu.stdout.on('data', (d: Buffer) => (log += d.toString('latin1')));
    qemu.stderr.on('data', (d: Buffer) => (log += d.toString('latin1')));
    const timer = setTimeout(() => qemu.kill('SIGKILL'), timeoutMs);
    qemu.once('exit', () => {
      clearTimeout(timer);
      resolve(log);
    });
  });
}

/**
 * Hostile requests (fuzz-requests.ts) in rounds of 200 from before the boot starts until it has
 * ended, so every request the VM makes meets a server under fuzz (issue 14). Each round has its
 * own seed (seed + round): a 5xx is replayed with that seed, whatever the machine's speed.
 */
async function fuzzWhile(base: string, boot: Promise<unknown>, seed: number): Promise<{ total: number; rounds: number; serverErrors: (FuzzResult & { round: number })[]; unanswered: (FuzzResult & { round: number })[] }> {
  let booting = true;
  boot.then(() => (booting = false), () => (booting = false));
  const result = { total: 0, rounds: 0, serverErrors: [] as (FuzzResult & { round: number })[], unanswered: [] as (FuzzResult & { round: number })[] };
  for (let round = 0; booting; round++) {
    const report = await runFuzz(base, { seed: seed + round, count: 200, concurrency: 2, targets: { macs: [FUZZED_MAC], imageIds: [h.store.currentId('demo')!], imageNames: ['demo'] } });
    result.total += report.total;
    result.rounds++;
    result.serverErrors.push(...report.serverErrors.map((e) => ({ ...e, round })));
    result.unanswered.push(...report.unanswered.map((e) => ({ ...e, round })));
  }
  return result;
}

describe('rendered scripts in a real iPXE', () => {
  // UEFI is the case that needs initrd=initrd.img to name the initrd iPXE downloaded (MACHINE-NOTES).
  it.each(['bios', 'uefi'] as const)('%s: generic script -> per-MAC script -> named kernel and initrd with the netboot command line -> the kernel runs /init (BIOS: while the server is fuzzed)', async (firmware) => {
    const port = (h.app.server.address() as AddressInfo).port;
    const boot = bootInQemu(port, 200_000, firmware);
    // BIOS: the boot runs while the same server is fuzzed (one boot, no extra VM).
    const fuzz = firmware === 'bios' ? fuzzWhile(`http://127.0.0.1:${port}`, boot, 0x14b105) : null;
    const log = await boot;
    if (fuzz) {
      const report = await fuzz;
      expect(report.rounds).toBeGreaterThanOrEqual(1);
      expect(report.serverErrors).toEqual([]);
      expect(report.unanswered).toEqual([]);
    }
    const line = /NETBOOT-CMDLINE: (.*)/.exec(log)?.[1];
    expect(line, log.slice(-3000)).toBeDefined();
    const image = h.store.currentId('demo')!;
    expect(line).toContain(`initrd=initrd.img netboot.server=http://10.0.2.100:80 netboot.mac=${MAC} netboot.image=${image} netboot.root=ram`);
    expect(line).toMatch(new RegExp(`netboot\\.layer=http://10\\.0\\.2\\.100:80/machines/${MAC_HYP}/layer\\?boot=[0-9a-f]+&image=${image}&exp=\\d+&sig=[0-9a-f]{64}`));
    expect(line).toContain('netboot.init=/sbin/init netboot.reboot=30 console=ttyS0 quiet');
    const phases = h.timeline.current(MAC)!.phases.map((p) => p.phase);
    expect(phases).toEqual(['script', 'kernel', 'initrd']);
    expect(h.timeline.current(MAC)!.phases[1]!.bytes).toBe(readFileSync(h.store.artifactPath(image, 'vmlinuz')!).length);
  }, 240_000);

  it('bios: a kernel download that waits its turn (held, then 503 + Retry-After, server.admission.maxBootFileStreams) boots once the slot frees', async () => {
    const port = (h.app.server.address() as AddressInfo).port;
    const yaml = (admission: string) =>
      baseYaml({ server: admission, machines: `  ${FUZZED_MAC}:\n    hostname: fuzzed\n` }).replace('address: 127.0.0.1\n  httpPort: 8080', 'address: 10.0.2.100\n  httpPort: 80');
    h.setConfig(yaml('  admission:\n    maxBootFileStreams: 1\n    maxRetryAfterSeconds: 2\n'));
    const image = h.store.currentId('demo')!;
    // Another machine's kernel download that reads nothing keeps the one slot.
    const holder = new Promise<ClientRequest>((resolve, reject) => {
      const req = httpGet(`http://127.0.0.1:${port}/images/${image}/vmlinuz?mac=${FUZZED_MAC.replaceAll(':', '-')}`, (res) => {
        expect(res.statusCode).toBe(200);
        res.pause();
        resolve(req);
      });
      req.on('error', reject);
    });
    const held = await holder;
    const refusedBefore = await refusedWaits();
    try {
      const boot = bootInQemu(port, 200_000, 'bios');
      // The VM's kernel request waited in the queue, and its hold ran out at least once (503 + Retry-After).
      let ended = false;
      void boot.then(() => (ended = true));
      await until(async () => ended || (h.timeline.current(MAC)?.phases.some((p) => p.phase === 'queued') === true && (await refusedWaits()) > refusedBefore));
      expect(ended, ended ? (await boot).slice(-3000) : '').toBe(false);
      held.destroy();
      const log = await boot;
      expect(/NETBOOT-CMDLINE: (.*)/.exec(log)?.[1], log.slice(-3000)).toBeDefined();
      // iPXE itself honoured the 503 + Retry-After: the script's own retry never ran.
      expect(log).not.toMatch(/kernel download failed/);
      // Let in after a wait longer than one hold (2 s): it came back after its 503, as the counter said.
      const queued = h.timeline.current(MAC)!.phases.filter((p) => p.phase === 'queued');
      expect(queued.at(-1)!.detail).toMatch(/^waited \d+\.\d s for a kernel or initrd stream/);
      expect(queued.at(-1)!.durationMs).toBeGreaterThanOrEqual(2000);
    } finally {
      held.destroy();
      h.setConfig(yaml(''));
    }
  }, 240_000);
});

async function refusedWaits(): Promise<number> {
  const text = await h.metrics.registry.metrics();
  return Number(/netboot_boot_file_stream_503_total\{reason="wait"\} (\d+)/.exec(text)?.[1] ?? 0);
}

async function until(check: () => Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((r) => setTimeout(r, 100));
}
