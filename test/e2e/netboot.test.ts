import { mkdtemp, writeFile, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../server/lab/lab.ts';
import { addClientNamespace } from '../../server/lab/netns.ts';
import type { Vm } from '../../server/lab/vm.ts';
import { buildImage } from '../../server/app/images.ts';
import { ImageCache } from '../../server/images/cache.ts';
import { parseConfig } from '../../server/config/load.ts';
import { silentLogger } from '../../server/log.ts';
import { startDockerd, type Dockerd } from '../lab/dockerd.ts';
import { busyboxImage, e2eImage } from '../fixtures/images/e2e.ts';
import { FIXTURE_DIR } from '../fixtures/cache.ts';
import { EXIT, REPO_ROOT } from '../../server/cli/common.ts';
import puppeteer, { type Browser } from 'puppeteer-core';
import { CHROMIUM } from '../ui/live-server.ts';

const run = promisify(execFile);

/**
 * End to end: real QEMU VMs (TCG) netboot real Docker images through `netboot serve` running
 * in a private network namespace. Every test asserts on what the VM printed on its console
 * and on the server's boot timeline. Console logs of every run stay in LOG_ROOT.
 */

/** The whole marker line (the console streams: a match must not stop at a half-received line). */
const MARKER = /NETBOOT-E2E-UP hostname=(\S*) image=(\S*) root=(\S*) extra=(\S*) addr=(\S*)\r?\n/;
const BOOT_TIMEOUT = 240_000;
/** Artifacts are content-addressed, so one cache serves every run on this machine. */
const CACHE_DIR = join(FIXTURE_DIR, 'e2e-cache');

interface Marker {
  hostname: string;
  image: string;
  root: string;
  extra: string;
  addr: string;
}

function parseMarker(match: RegExpExecArray): Marker {
  const [, hostname = '', image = '', root = '', extra = '', addr = ''] = match;
  return { hostname, image, root, extra, addr };
}

interface MachineSummary {
  state: string;
  imageId: string | null;
  lastBoot: { imageId?: string; phases: { phase: string; source: string; bytes?: number; detail?: string }[] } | null;
}

let dockerd: Dockerd;
let systemdRef: string;
let busyboxRef: string;
let logRoot: string;
const labs: Lab[] = [];

beforeAll(async () => {
  logRoot = await mkdtemp(join(tmpdir(), 'netboot-e2e-'));
  process.stdout.write(`e2e logs: ${logRoot}\n`);
  dockerd = await startDockerd();
  systemdRef = await e2eImage(dockerd);
  busyboxRef = await busyboxImage(dockerd);
  // Build both images once up front; every lab's server then finds them in the shared cache.
  const cache = new ImageCache({ cacheDir: CACHE_DIR, log: silentLogger });
  for (const [name, ref, root] of [
    ['debian', systemdRef, 'ram'],
    ['busybox', busyboxRef, 'ram'],
    ['busybox-nbd', busyboxRef, 'nbd'],
    ['debian-nbd', systemdRef, 'nbd'],
  ] as const) {
    await buildImage(cache, imageEntry(name, { source: `docker:${ref}`, cmdline: 'console=ttyS0', root }), silentLogger, { docker: dockerd.docker });
  }
}, 3_600_000);

afterAll(async () => {
  await Promise.all(labs.map((lab) => lab.close().catch(() => undefined)));
  await dockerd?.stop();
});

function imageEntry(name: string, entry: Record<string, unknown>) {
  return parseConfig(stringify({ images: { [name]: entry } }), '/virtual/netboot.yaml').images.get(name)!;
}

interface LabSpec {
  name: string;
  subnet: number;
  dhcp?: Record<string, unknown>;
  machines?: Record<string, Record<string, unknown>>;
  defaults?: Record<string, unknown>;
  images?: Record<string, Record<string, unknown>>;
  labDhcp?: boolean | { bootUrl?: string };
  files?: Record<string, string>;
  /** More server.* settings. */
  server?: Record<string, unknown>;
}

async function startLab(spec: LabSpec): Promise<{ lab: Lab; configFile: string; config: Record<string, unknown> }> {
  const dir = await mkdtemp(join(tmpdir(), `netboot-e2e-${spec.name}-`));
  for (const [path, content] of Object.entries(spec.files ?? {})) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), content);
  }
  const config = {
    server: {
      address: `10.77.${spec.subnet}.1`,
      httpPort: 8080,
      dhcp: spec.dhcp ?? { mode: 'proxy' },
      stateDir: join(dir, 'state'),
      cacheDir: CACHE_DIR,
      rebootDelay: 0,
      imageCheckSeconds: 2,
      ...spec.server,
    },
    images: spec.images ?? {
      debian: { source: `docker:${systemdRef}`, cmdline: 'console=ttyS0' },
      busybox: { source: `docker:${busyboxRef}`, cmdline: 'console=ttyS0' },
    },
    machines: spec.machines ?? {},
    defaults: spec.defaults ?? { image: 'busybox', unknown: 'deny' },
  };
  const configFile = join(dir, 'netboot.yaml');
  await writeFile(configFile, stringify(config));
  const lab = await Lab.start({
    configFile,
    logDir: join(logRoot, spec.name),
    labDhcp: spec.labDhcp,
    env: { DOCKER_HOST: dockerd.host },
  });
  labs.push(lab);
  return { lab, configFile, config };
}

async function bootAndWait(lab: Lab, name: string, mac: string, options: Partial<Parameters<Lab['bootVm']>[0]> = {}): Promise<{ vm: Vm; marker: Marker }> {
  const vm = await lab.bootVm({ name, mac, ...options });
  const marker = parseMarker(await vm.waitFor(MARKER, BOOT_TIMEOUT));
  return { vm, marker };
}

async function machine(lab: Lab, mac: string): Promise<MachineSummary> {
  return lab.api<MachineSummary>(`/api/machines/${mac.replace(/:/g, '-')}`);
}

function phasesOf(summary: MachineSummary): string[] {
  return summary.lastBoot?.phases.map((p) => p.phase) ?? [];
}

/** Polls until the machine's last boot shows `phase` (events are posted in the background). */
async function waitForPhase(lab: Lab, mac: string, phase: string, timeoutMs = 60_000): Promise<MachineSummary> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const summary = await machine(lab, mac);
    if (phasesOf(summary).includes(phase)) return summary;
    if (Date.now() > deadline) throw new Error(`${mac}: no ${phase} in timeline ${JSON.stringify(phasesOf(summary))}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Debian's chromium, run inside the lab's namespace (the server is reachable only there). */
async function chromiumIn(lab: Lab): Promise<Browser> {
  const wrapper = join(logRoot, `chromium-in-${lab.segment.ns}`);
  await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${lab.segment.ns} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  return puppeteer.launch({ executablePath: wrapper, headless: true, pipe: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'] });
}

async function closeLab(lab: Lab): Promise<void> {
  await lab.close();
  labs.splice(labs.indexOf(lab), 1);
}

describe('netboot end to end (QEMU, TCG)', () => {
  it('boots two machines from the same systemd image at once, each with its own top layer, while the server is fuzzed and the status page follows them live', async () => {
    const readToken = 'e2e-status-page-read-token';
    const { lab } = await startLab({
      name: 'two-machines',
      subnet: 201,
      machines: {
        '52:54:00:e2:00:01': { hostname: 'alpha', image: 'debian' },
        '52:54:00:e2:00:02': { hostname: 'beta', image: 'debian' },
      },
      server: { api: { readToken } },
    });
    const browser = await chromiumIn(lab);
    try {
      // The fleet page, opened once before the boots: every state a row shows arrives over the live stream.
      const page = await browser.newPage();
      await page.goto(`${lab.baseUrl}/login`);
      await page.type('#token', readToken);
      await Promise.all([page.waitForNavigation(), page.click('.login button')]);
      await page.evaluate(() => {
        const seen: Record<string, string[]> = {};
        const look = () => {
          for (const row of document.querySelectorAll<HTMLElement>('tr[data-mac]')) {
            const label = row.querySelector('.state')?.textContent ?? '';
            const list = (seen[row.dataset.mac!] ??= []);
            if (list.at(-1) !== label) list.push(label);
          }
        };
        look();
        new MutationObserver(look).observe(document.body, { subtree: true, childList: true, characterData: true });
        (window as unknown as { seenStates: typeof seen }).seenStates = seen;
      });
      // Hostile HTTP traffic (test/http/fuzz-requests.ts, fixed seeds) from inside the segment, in rounds of 500 until both machines are up.
      const fuzzStop = join(logRoot, 'two-machines', 'fuzz.stop');
      const fuzz = lab.segment
        .exec('node', ['--import', 'tsx', join(REPO_ROOT, 'test/http/fuzz-child.ts'), lab.baseUrl, '1301', '500', JSON.stringify({ macs: ['52:54:00:e2:00:01', '52:54:00:e2:00:02'], imageNames: ['debian', 'busybox'] }), fuzzStop], { timeoutMs: 900_000 })
        .then(({ stdout }) => JSON.parse(stdout) as { total: number; rounds: number; histogram: Record<string, number>; serverErrors: unknown[] });
      let a: { marker: Marker };
      let b: { marker: Marker };
      try {
        [a, b] = await Promise.all([bootAndWait(lab, 'alpha', '52:54:00:e2:00:01'), bootAndWait(lab, 'beta', '52:54:00:e2:00:02', { nic: 'e1000' })]);
      } finally {
        await writeFile(fuzzStop, '');
      }
      const report = await fuzz;
      // Rounds ran from before the first boot request until both were up: the fuzz overlapped the boots.
      expect(report.rounds).toBeGreaterThanOrEqual(2);
      expect(report.total).toBe(500 * report.rounds);
      expect(report.serverErrors).toEqual([]);
      expect(a.marker).toMatchObject({ hostname: 'alpha', root: 'overlay' });
      expect(b.marker).toMatchObject({ hostname: 'beta', root: 'overlay' });
      expect(a.marker.image).toBe(b.marker.image);
      for (const mac of ['52:54:00:e2:00:01', '52:54:00:e2:00:02']) {
        const summary = await waitForPhase(lab, mac, 'up');
        expect(summary.state).toBe('up');
        expect(summary.lastBoot?.imageId).toBe(a.marker.image);
        const phases = phasesOf(summary);
        for (const phase of ['dhcp', 'script', 'kernel', 'initrd', 'layer', 'rootfs', 'switch_root', 'up']) expect(phases).toContain(phase);
        // /init's size probe (busybox wget --spider, a GET it cuts short) is recorded as aborted; then the whole download.
        const downloads = summary.lastBoot!.phases.filter((p) => p.phase === 'rootfs' && p.source === 'http' && !p.detail?.includes('aborted'));
        expect(downloads.map((p) => p.bytes)).toEqual([expect.any(Number)]);
        expect(downloads[0]!.bytes).toBeGreaterThan(10_000_000);
      }
      await page.waitForFunction(() => [...document.querySelectorAll('tr[data-mac]')].filter((r) => (r as HTMLElement).dataset.state === 'up').length >= 2, { timeout: 60_000 });
      const seen = await page.evaluate(() => (window as unknown as { seenStates: Record<string, string[]> }).seenStates);
      await page.screenshot({ path: join(logRoot, 'two-machines', 'status-page.png'), fullPage: true });
      for (const mac of ['52:54:00:e2:00:01', '52:54:00:e2:00:02']) {
        const states = seen[mac] ?? [];
        expect(states[0]).toBe('never');
        expect(states.at(-1)).toBe('up');
        // The row moved through the boot's phases while the page stayed open (how many it shows depends on when updates batch).
        expect(states.filter((s) => s.startsWith('booting · ')).length).toBeGreaterThanOrEqual(2);
      }
    } finally {
      await browser.close();
      await closeLab(lab);
    }
  }, 600_000);

  it('adds boot information beside the lab DHCP server (proxyDHCP), a stranger on the segment gets nothing of the booting machine, and a machine added while running boots', async () => {
    const { lab, config } = await startLab({
      name: 'proxy',
      subnet: 202,
      labDhcp: true,
      machines: { '52:54:00:e2:00:11': { hostname: 'proxied' } },
    });
    const attacker = await addClientNamespace(lab.segment, { mac: '52:54:00:e2:00:66', address: '10.77.202.66' });
    try {
      // While the machine boots, a host beside it keeps asking for its script (grants), its layer, its timeline, and posts events for it.
      const statuses = join(logRoot, 'proxy', 'attacker-statuses.txt');
      const victim = `${lab.baseUrl}/machines/52-54-00-e2-00-11`;
      const curl = `curl -s -m 5 -o /dev/null -w '%{http_code}\\n'`;
      attacker.spawn('sh', ['-c', `while true; do ${curl} ${victim}/boot.ipxe; ${curl} '${victim}/layer?boot=0&image=x&exp=9999999999&sig=00'; ${curl} ${lab.baseUrl}/api/machines; ` +
        `${curl} -H 'Content-Type: application/json' -d '{"phase":"failed","t":1,"detail":"forged"}' ${lab.baseUrl}/api/machines/52-54-00-e2-00-11/events; sleep 0.3; done >> ${statuses}`]);
      const first = await bootAndWait(lab, 'proxied', '52:54:00:e2:00:11');
      expect(first.marker.hostname).toBe('proxied');
      // The address came from the lab's dnsmasq range (.100-.199), not from us.
      expect(first.marker.addr).toMatch(/^10\.77\.202\.1\d\d\//);
      // The busybox image has no `up` report (that is a systemd unit): its last event is switch_root.
      const summary = await waitForPhase(lab, '52:54:00:e2:00:11', 'switch_root');
      expect(summary.state).toBe('booting');
      expect(summary.lastBoot!.phases.some((p) => p.detail === 'forged')).toBe(false);
      await attacker.destroy();
      const seen = (await readFile(statuses, 'utf8')).trim().split('\n');
      expect(seen.length).toBeGreaterThanOrEqual(3);
      expect(new Set(seen)).toEqual(new Set(['403', '401']));
      const security = (await lab.api<{ security: { kind: string }[] }>('/api/machines/52-54-00-e2-00-11')).security.map((s) => s.kind);
      expect(security).toContain('identity-script');
      expect(security).toContain('identity-layer');
      expect(security).toContain('event-token');

      // Adding a machine is one line in the config file; no restart.
      (config.machines as Record<string, unknown>)['52:54:00:e2:00:12'] = { hostname: 'newcomer' };
      await lab.writeConfig(stringify(config));
      const second = await bootAndWait(lab, 'newcomer', '52:54:00:e2:00:12');
      expect(second.marker.hostname).toBe('newcomer');
    } finally {
      await attacker.destroy();
      await closeLab(lab);
    }
  }, 600_000);

  it('hands out the reserved address in full DHCP mode; artifacts come through an HTTP cache in front, so a second machine costs netboot no rootfs request', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'netboot-e2e-nginx-'));
    const { lab } = await startLab({
      name: 'full-dhcp',
      subnet: 203,
      dhcp: { mode: 'full', pool: { start: '10.77.203.50', end: '10.77.203.60', router: '10.77.203.1' } },
      machines: { '52:54:00:e2:00:21': { hostname: 'reserved', ip: '10.77.203.77' }, '52:54:00:e2:00:22': { hostname: 'second' } },
      server: { artifactBaseUrl: 'http://10.77.203.1:8081' },
    });
    // An admin's nginx cache in front of netboot, in the lab's namespace (so it is on the segment).
    const accessLog = join(cacheDir, 'access.log');
    await writeFile(
      join(cacheDir, 'nginx.conf'),
      `daemon off; user root; worker_processes 1; pid ${cacheDir}/nginx.pid; error_log ${cacheDir}/error.log;
events { worker_connections 64; }
http {
  client_body_temp_path ${cacheDir}/tmp; proxy_temp_path ${cacheDir}/tmp; fastcgi_temp_path ${cacheDir}/tmp; uwsgi_temp_path ${cacheDir}/tmp; scgi_temp_path ${cacheDir}/tmp;
  proxy_cache_path ${cacheDir}/cache keys_zone=netboot:10m max_size=2g inactive=30d;
  log_format cache '$remote_addr $request_method $uri $status $upstream_cache_status';
  access_log ${accessLog} cache;
  server {
    listen 10.77.203.1:8081;
    location /images/ { proxy_pass http://10.77.203.1:8080; proxy_cache netboot; proxy_cache_lock on; proxy_cache_valid 200 30d; }
  }
}
`,
    );
    lab.segment.spawn('nginx', ['-c', join(cacheDir, 'nginx.conf'), '-p', cacheDir], { stdio: 'ignore' });
    await lab.segment.exec('sh', ['-c', 'for i in $(seq 600); do curl -s -o /dev/null http://10.77.203.1:8081/ && exit 0; sleep 0.1; done; exit 1'], { timeoutMs: 120_000 });
    const rootfsRequestsSeenByNetboot = async () =>
      (await readFile(lab.serverLog, 'utf8')).split('\n').filter((line) => /"url":"\/images\/[0-9a-f]+\/rootfs\.squashfs/.test(line)).length;
    try {
      const { vm, marker } = await bootAndWait(lab, 'reserved', '52:54:00:e2:00:21');
      expect(marker).toMatchObject({ hostname: 'reserved', addr: '10.77.203.77/24' });
      expect(vm.console).toMatch(/netboot: image artifacts from http:\/\/10\.77\.203\.1:8081/);
      const afterFirst = await rootfsRequestsSeenByNetboot();
      expect(afterFirst).toBeGreaterThan(0);

      const second = await bootAndWait(lab, 'second', '52:54:00:e2:00:22');
      expect(second.marker).toMatchObject({ hostname: 'second', image: marker.image });
      expect(await rootfsRequestsSeenByNetboot()).toBe(afterFirst);
      // The cache answered the second machine's kernel, initrd and rootfs itself.
      const secondAddr = second.marker.addr.replace(/\/.*/, '');
      const served = (await readFile(accessLog, 'utf8')).split('\n').filter((l) => l.startsWith(`${secondAddr} GET /images/${marker.image}/`));
      expect(served.map((l) => l.split(' ')[2]!.replace(/.*\//, '')).sort()).toEqual(expect.arrayContaining(['initrd.img', 'rootfs.squashfs', 'vmlinuz']));
      expect(served.filter((l) => l.includes('/rootfs.squashfs')).every((l) => / HIT$/.test(l))).toBe(true);
      // Layer and events stayed on netboot: the second machine's timeline has its layer and switch_root.
      const summary = await waitForPhase(lab, '52:54:00:e2:00:22', 'switch_root');
      expect(phasesOf(summary)).toContain('layer');
    } finally {
      await closeLab(lab);
      await rm(cacheDir, { recursive: true, force: true });
    }
  }, 600_000);

  it('six machines boot at once with one root stream allowed: each waits its turn (held open, or 503 + Retry-After), none fails, all reach userspace', async () => {
    const macs = [1, 2, 3, 4, 5, 6].map((i) => `52:54:00:e2:00:9${i}`);
    const { lab } = await startLab({
      name: 'storm',
      subnet: 209,
      dhcp: { mode: 'full', pool: { start: '10.77.209.50', end: '10.77.209.80', router: '10.77.209.1' } },
      machines: Object.fromEntries(macs.map((mac, i) => [mac, { hostname: `storm${i + 1}` }])),
      // Short Retry-After: machines ask again often, so the test does not sit out long estimated waits.
      server: { admission: { maxRootStreams: 1, preemptAfterSeconds: 3600, maxRetryAfterSeconds: 2 } },
    });
    const headers = join(logRoot, 'storm', 'slot-holder.headers');
    try {
      // A slow client holds the only slot until we let go, so every machine is sure to queue.
      const images = await lab.api<{ images: { name: string; currentId: string | null }[] }>('/api/images');
      const id = images.images.find((i) => i.name === 'busybox')!.currentId!;
      const holder = lab.segment.spawn('curl', ['-s', '--limit-rate', '4k', '-D', headers, '-o', '/dev/null', `${lab.baseUrl}/images/${id}/rootfs.squashfs?mac=02-00-00-00-00-99`], { stdio: 'ignore' });
      await lab.segment.exec('sh', ['-c', `for i in $(seq 1200); do grep -q '^HTTP/1.1 200' ${headers} 2>/dev/null && exit 0; sleep 0.1; done; exit 1`], { timeoutMs: 180_000 });

      const vms = await Promise.all(macs.map((mac, i) => lab.bootVm({ name: `storm${i + 1}`, mac })));
      for (const mac of macs) await waitForPhase(lab, mac, 'queued', BOOT_TIMEOUT);
      holder.kill('SIGKILL');

      const markers = await Promise.all(vms.map(async (vm) => parseMarker(await vm.waitFor(MARKER, BOOT_TIMEOUT))));
      expect(markers.map((m) => m.hostname)).toEqual(macs.map((_, i) => `storm${i + 1}`));
      // A waiting request is held open for up to maxRetryAfterSeconds and answered as soon as a slot frees; past that
      // it gets 503 + Retry-After (the console says `server busy`). Which of the two each machine saw depends on timing,
      // so the timeline's queue wait below is what is checked; neither may fail the boot.
      for (const vm of vms) expect(vm.console).not.toMatch(/netboot: FAILED/);
      for (const mac of macs) {
        const summary = await waitForPhase(lab, mac, 'switch_root');
        const queued = summary.lastBoot!.phases.filter((p) => p.phase === 'queued');
        // One entry when the machine got its place, one with the wait when it was let in.
        expect(queued.length).toBe(2);
        expect((queued[1] as { durationMs?: number }).durationMs).toBeGreaterThan(0);
        expect(phasesOf(summary)).not.toContain('failed');
      }
    } finally {
      await closeLab(lab);
    }
  }, 900_000);

  it('applies the unknown-MAC policy: deny is printed on the console, menu times out to the default image', async () => {
    const { lab, config } = await startLab({
      name: 'unknown',
      subnet: 204,
      labDhcp: { bootUrl: 'http://10.77.204.1:8080/boot.ipxe' },
      defaults: { image: 'busybox', unknown: 'deny' },
    });
    try {
      // Under deny our DHCP ignores the MAC (several servers can share a LAN). Here the lab's own
      // DHCP server points iPXE at our /boot.ipxe, so the refusal reaches the console.
      const denied = await lab.bootVm({ name: 'denied', mac: '52:54:00:e2:00:31' });
      await denied.waitFor(/not allowed to boot/i, BOOT_TIMEOUT);
      expect(denied.console).not.toMatch(MARKER);

      (config.defaults as Record<string, unknown>) = { image: 'busybox', unknown: 'menu', menuTimeout: 2 };
      await lab.writeConfig(stringify(config));
      const { vm, marker } = await bootAndWait(lab, 'menu', '52:54:00:e2:00:32');
      expect(vm.console).toMatch(/busybox/);
      expect(marker.hostname).toMatch(/^node-525400e20032$/);
    } finally {
      await closeLab(lab);
    }
  }, 600_000);

  it('moves machines to a new image build on their next boot while the old id stays served; a machine with a disk caches each id there', async () => {
    const tag = 'netboot-e2e/updating:latest';
    await dockerd.cli(['tag', busyboxRef, tag]);
    const { lab } = await startLab({
      name: 'update',
      subnet: 205,
      images: { updating: { source: `docker:${tag}`, cmdline: 'console=ttyS0', disk: { cache: true } } },
      defaults: { image: 'updating', unknown: 'deny' },
      machines: { '52:54:00:e2:00:41': { hostname: 'upd', disk: { init: true } } },
    });
    // The config's disk: policy reaches /init through the script (disk details: test/initramfs/disk.test.ts).
    const diskDir = await mkdtemp(join(tmpdir(), 'netboot-e2e-disk-'));
    const disk = join(diskDir, 'upd.img');
    await writeFile(disk, '');
    await run('truncate', ['-s', '1G', disk]);
    const diskPhases = async () =>
      (await machine(lab, '52:54:00:e2:00:41')).lastBoot!.phases.filter((p) => p.phase === 'disk').map((p) => p.detail ?? '');
    try {
      const before = await bootAndWait(lab, 'upd-1', '52:54:00:e2:00:41', { disks: [disk] });
      expect(before.marker.extra).toBe('');
      const oldId = before.marker.image;
      expect(await diskPhases()).toEqual([expect.stringMatching(/^prepared: \/dev\/vda/), expect.stringMatching(new RegExp(`^cache_miss: ${oldId}, \\d+ bytes downloaded`))]);
      // The busybox image powers off right after its marker; its QEMU must let go of the disk before the next boot opens it.
      await before.vm.exited;

      const context = await mkdtemp(join(tmpdir(), 'netboot-e2e-v2-'));
      await writeFile(join(context, 'Dockerfile'), `FROM ${busyboxRef}\nRUN ["/bin/busybox", "sh", "-c", "echo v2 > /etc/netboot-e2e-extra"]\n`);
      await dockerd.cli(['build', '-t', tag, context]);

      // The server notices the tag moved, builds the new id and points the image at it.
      const deadline = Date.now() + 600_000;
      let images: { images: { name: string; currentId: string | null }[] } = { images: [] };
      while (Date.now() < deadline) {
        images = await lab.api('/api/images');
        const current = images.images.find((i) => i.name === 'updating')?.currentId;
        if (current && current !== oldId) break;
        await new Promise((r) => setTimeout(r, 3000));
      }
      const newId = images.images.find((i) => i.name === 'updating')?.currentId;
      expect(newId).toMatch(/^[0-9a-f]{16}$/);
      expect(newId).not.toBe(oldId);

      // The old id is still served to machines that booted it.
      const head = await lab.segment.exec('curl', ['-sf', '-o', '/dev/null', '-w', '%{http_code}', `${lab.baseUrl}/images/${oldId}/rootfs.squashfs`]);
      expect(head.stdout).toBe('200');

      const after = await bootAndWait(lab, 'upd-2', '52:54:00:e2:00:41', { disks: [disk] });
      expect(after.marker).toMatchObject({ extra: 'v2', image: newId });
      expect(await diskPhases()).toEqual([expect.stringMatching(new RegExp(`^cache_miss: ${newId}, \\d+ bytes downloaded`))]);
    } finally {
      await closeLab(lab);
      await rm(diskDir, { recursive: true, force: true });
    }
  }, 1_200_000);

  it('netboot vm --lab: exit 0 on the expected console text, 1 when the VM powers off before it, 5 on timeout', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'netboot-e2e-cli-'));
    const configFile = join(dir, 'netboot.yaml');
    await writeFile(
      configFile,
      stringify({
        server: { address: '10.77.207.1', stateDir: join(dir, 'state'), cacheDir: CACHE_DIR, rebootDelay: 0 },
        images: { busybox: { source: `docker:${busyboxRef}`, cmdline: 'console=ttyS0' } },
        machines: {
          '52:54:00:e2:00:61': { hostname: 'cli' },
          // A shell as init: the VM stays up and prints nothing more, so only the timeout can end the wait.
          '52:54:00:e2:00:62': { hostname: 'stays-up', cmdline: 'netboot.init=/bin/sh' },
        },
      }),
    );
    const netboot = (args: string[]) =>
      run(join(REPO_ROOT, 'bin/netboot'), args, { timeout: 400_000, env: { ...process.env, DOCKER_HOST: dockerd.host } }).then(
        ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
        (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
      );
    const ok = await netboot(['vm', '--lab', '--config', configFile, '--mac', '52-54-00-E2-00-61', '--expect', 'NETBOOT-E2E-UP hostname=cli', '--timeout', '300']);
    expect(ok.stdout).toMatch(/NETBOOT-E2E-UP hostname=cli image=\S+ root=overlay/);
    expect(ok.code).toBe(EXIT.ok);

    // The busybox image powers off after its marker: waiting for text it never prints ends when it exits.
    const gone = await netboot(['vm', '--lab', '--config', configFile, '--mac', '52:54:00:e2:00:61', '--expect', 'text this image never prints', '--timeout', '300']);
    expect(gone.code).toBe(EXIT.failure);
    expect(gone.stderr).toMatch(/exited before printing/);
    expect(gone.stderr).toMatch(/last console lines \(full log: \S+\.log\)/);

    // A VM that stays up: the timeout is the only way out, however fast the machine boots.
    const late = await netboot(['vm', '--lab', '--config', configFile, '--mac', '52:54:00:e2:00:62', '--expect', 'text this image never prints', '--timeout', '20']);
    expect(late.code).toBe(EXIT.timeout);
    expect(late.stderr).toMatch(/last console lines \(full log: \S+\.log\)/);
  }, 900_000);

  it('streams the root over NBD: a fraction of the image is read, and a systemd image reaches multi-user through a server restart', async () => {
    const { lab } = await startLab({
      name: 'nbd',
      subnet: 208,
      images: {
        'busybox-nbd': { source: `docker:${busyboxRef}`, cmdline: 'console=ttyS0', root: 'nbd' },
        'debian-nbd': { source: `docker:${systemdRef}`, cmdline: 'console=ttyS0', root: 'nbd' },
      },
      defaults: { image: 'busybox-nbd', unknown: 'deny' },
      machines: { '52:54:00:e2:00:71': { hostname: 'streamer' }, '52:54:00:e2:00:72': { hostname: 'systemd-nbd', image: 'debian-nbd' } },
    });
    try {
      // The lab's server builds the nbd variants (initrd with netboot-nbd) at start-up.
      const small = await bootAndWait(lab, 'streamer', '52:54:00:e2:00:71');
      expect(small.marker).toMatchObject({ hostname: 'streamer', root: 'overlay' });
      expect(small.vm.console).toMatch(/netboot: rootfs: nbd:\/\/10\.77\.208\.1:10809\/\S+ mounted read-only/);
      const summary = await machine(lab, '52:54:00:e2:00:71');
      expect(summary.lastBoot?.phases.some((p) => p.phase === 'rootfs' && p.source === 'nbd')).toBe(true);
      const manifest = await lab.api<{ artifacts: Record<string, { size: number }> }>(`/images/${small.marker.image}/manifest.json`);
      const imageBytes = manifest.artifacts['rootfs.squashfs']!.size;
      const { stdout: metrics } = await lab.segment.exec('curl', ['-sf', `${lab.baseUrl}/metrics`]);
      const read = Number(new RegExp(`netboot_nbd_bytes_total\\{export="${small.marker.image}"\\} (\\d+)`).exec(metrics)?.[1]);
      expect(read).toBeGreaterThan(0);
      expect(read).toBeLessThan(imageBytes * 0.1);

      // The server restarts while systemd is reading its root over NBD: netboot-nbd reconnects,
      // the kernel holds the reads meanwhile, and the machine comes up anyway.
      const vm = await lab.bootVm({ name: 'systemd-nbd', mac: '52:54:00:e2:00:72' });
      await vm.waitFor(/netboot: rootfs: nbd:\/\/\S+ mounted read-only/, BOOT_TIMEOUT);
      await lab.restartServer(3000);
      const marker = parseMarker(await vm.waitFor(MARKER, BOOT_TIMEOUT));
      expect(marker).toMatchObject({ hostname: 'systemd-nbd', root: 'overlay' });
      expect(vm.console).toMatch(/netboot-nbd: nbd0: connection to \S+ lost; reconnecting/);
      expect(vm.console).not.toMatch(/SQUASHFS error|I\/O error, dev nbd0|netboot-nbd\[\d+\]: segfault/);
      // The restarted server saw the same machine connect again and serve its reads.
      const serverLog = await readFile(lab.serverLog, 'utf8');
      const restartAt = serverLog.lastIndexOf('nbd server listening');
      expect(serverLog.slice(restartAt)).toMatch(new RegExp(`"client":"${marker.addr.replace(/\/.*/, '').replace(/\./g, '\\.')}:\\d+","export":"${marker.image}".*nbd client connected to export`));
      expect(vm.console).toMatch(/netboot: rootfs: nbd:\/\/\S+ mounted read-only/);
    } finally {
      await closeLab(lab);
    }
  }, 1_200_000);

  it("boots through OVMF's own UEFI PXE client, our DHCP and TFTP (ipxe.efi), then iPXE over HTTP", async () => {
    const { lab } = await startLab({
      name: 'uefi-pxe',
      subnet: 206,
      dhcp: { mode: 'full', efiBinary: 'ipxe.efi', pool: { start: '10.77.206.50', end: '10.77.206.60' } },
      machines: { '52:54:00:e2:00:51': { hostname: 'firmware' } },
    });
    try {
      const { vm, marker } = await bootAndWait(lab, 'firmware', '52:54:00:e2:00:51', { firmware: 'uefi-pxe' });
      expect(marker.hostname).toBe('firmware');
      expect(vm.console).toMatch(/iPXE/);
      const summary = await machine(lab, '52:54:00:e2:00:51');
      const tftp = summary.lastBoot?.phases.find((p) => p.phase === 'tftp');
      expect(tftp).toMatchObject({ source: 'tftp', detail: 'ipxe.efi' });
      expect(tftp!.bytes).toBeGreaterThan(100_000);
    } finally {
      await closeLab(lab);
    }
  }, 600_000);
});
