import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../server/cli/common.ts';
import { startDockerd, type Dockerd } from '../../server/lab/dockerd.ts';
import { addClientNamespace, createSegment, type Segment } from '../../server/lab/netns.ts';
import { startLabDhcp } from '../../server/lab/services.ts';
import { Vm } from '../../server/lab/vm.ts';
import { FIXTURE_DIR } from '../fixtures/cache.ts';
import { busyboxBootImage, offlineNodeBase } from './offline-images.ts';

const run = promisify(execFile);

/**
 * The repo's Dockerfile and docker-compose.yml as a lab admin uses them, for real:
 * - a private dockerd runs inside a test network namespace (a segment with a bridge at
 *   10.88.30.1, the lab's own DHCP server (dnsmasq) and no IPv6 router), so the compose file's
 *   `network_mode: host` puts netboot on that segment;
 * - the image is built from the repo's Dockerfile. No registry is reachable here, so BASE is
 *   not the official node:20 image but one made offline: a debootstrap root of Debian 12 with
 *   the packages the Dockerfile would install, plus this host's Node 20, npm cache and iPXE
 *   bundle (test/deploy/offline-images.ts);
 * - `docker-compose up -d` (Debian 12's compose v1) with the repo's compose file, an override
 *   that only points the optional Docker socket at the test engine, and a test config;
 * - a QEMU VM boots over the network from the containerised server to userspace;
 * - `docker-compose down` and `up -d` again: the machine keeps its machine-id and SSH host keys
 *   (the state volume), seen in its top layer fetched before and after by a client namespace
 *   with the machine's MAC (identity evidence as for the machine itself); with the state volume
 *   removed they change.
 */

const SERVER = '10.88.30.1';
const MAC = '52:54:00:88:30:11';
const HOSTNAME = 'dep1';
const PROJECT = 'dep';
const READ_TOKEN = 'read-token-of-the-compose-test';
const MARKER = /NETBOOT-E2E-UP hostname=(\S*) image=(\S*) root=(\S*) extra=(\S*) addr=(\S*)\r?\n/;
/** The engine's data roots (one per storage driver): the built images stay for the next run. */
const DATA_ROOT = join(FIXTURE_DIR, 'dockerd-deploy');

let dir: string;
let segment: Segment | undefined;
let dockerd: Dockerd | undefined;
let vm: Vm | undefined;
let composeEnv: NodeJS.ProcessEnv;
let composeArgs: string[];
const timings: Record<string, number> = {};

async function timed<T>(name: string, step: () => Promise<T>): Promise<T> {
  const started = Date.now();
  try {
    return await step();
  } finally {
    timings[name] = (Date.now() - started) / 1000;
  }
}

function compose(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run('docker-compose', [...composeArgs, ...args], { env: composeEnv, cwd: REPO_ROOT, maxBuffer: 64 << 20 });
}

async function removeStateVolume(): Promise<void> {
  await dockerd!.cli(['volume', 'rm', `${PROJECT}_netboot-state`]).catch(() => undefined);
}

async function containerId(): Promise<string> {
  const id = (await compose(['ps', '-q', 'netboot'])).stdout.trim();
  if (!id) throw new Error('docker-compose ps shows no netboot container');
  return id;
}

/** Waits for the compose healthcheck (/healthz through deploy/healthcheck.mjs) to pass. */
async function waitHealthy(timeoutMs = 180_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const id = await containerId();
    const { stdout } = await dockerd!.cli(['inspect', '-f', '{{.State.Status}} {{.State.Health.Status}}', id]);
    const [state, health] = stdout.trim().split(' ');
    if (health === 'healthy') return id;
    if (state !== 'running' || health === 'unhealthy' || Date.now() > deadline) {
      const logs = await dockerd!.cli(['logs', '--tail', '40', id]).then((r) => r.stdout + r.stderr, () => '');
      throw new Error(`netboot container is ${state}/${health}:\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function api<T>(path: string): Promise<T> {
  const { stdout } = await segment!.exec('curl', ['-sf', '-m', '10', '-H', `Authorization: Bearer ${READ_TOKEN}`, `http://${SERVER}:8080${path}`]);
  return JSON.parse(stdout) as T;
}

/** Waits until the container has the image built (it builds on start; a fresh cache volume has nothing). */
async function waitImageReady(timeoutMs = 600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { images } = await api<{ images: { name: string; state: string }[] }>('/api/images');
    if (images[0]?.state === 'ready') return;
    if (images[0]?.state === 'failed' || Date.now() > deadline) {
      // Its request lines (this loop's polling among them) would push the build's lines out of view.
      const all = await dockerd!.cli(['logs', await containerId()]).then((r) => r.stdout + r.stderr, () => '');
      const logs = all.split('\n').filter((line) => !line.includes('"msg":"http"')).slice(-40).join('\n');
      throw new Error(`image ${images[0]?.name} is ${images[0]?.state}:\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/**
 * The machine's full top layer as the machine itself gets it: a namespace with its MAC takes
 * a lease (netboot's proxy DHCP sees the packet), asks for its script and fetches the signed
 * layer URL in it. Returns its /etc/machine-id and SSH host keys (private and public).
 */
async function machineIdentity(): Promise<{ machineId: string; hostKeys: string; hostKeyFiles: string[] }> {
  const client = await addClientNamespace(segment!, { mac: MAC });
  try {
    const applyLease = join(dir, 'udhcpc.sh');
    await client.exec('busybox', ['udhcpc', '-i', 'eth0', '-n', '-q', '-t', '5', '-T', '1', '-s', applyLease], { timeoutMs: 30_000 });
    const base = `http://${SERVER}:8080`;
    const { stdout: script } = await client.exec('curl', ['-sf', '-m', '10', `${base}/machines/${MAC.replace(/:/g, '-')}/boot.ipxe`]);
    const layerUrl = /netboot\.layer=(\S+)/.exec(script)?.[1];
    if (!layerUrl) throw new Error(`no netboot.layer= in the machine's script:\n${script}`);
    const layer = join(dir, `layer-${Date.now()}.tar`);
    await client.exec('curl', ['-sf', '-m', '30', '-o', layer, layerUrl]);
    const names = (await run('tar', ['-tf', layer])).stdout.split('\n');
    const hostKeyFiles = names.filter((n) => /etc\/ssh\/ssh_host_\w+_key(\.pub)?$/.test(n)).sort();
    const machineIdFile = names.find((n) => /(^|\/)etc\/machine-id$/.test(n));
    if (!machineIdFile) throw new Error(`no etc/machine-id in the layer: ${names.join(' ')}`);
    const read = async (name: string) => (await run('tar', ['-xOf', layer, name], { maxBuffer: 8 << 20 })).stdout;
    const hostKeys = (await Promise.all(hostKeyFiles.map(read))).join('');
    return { machineId: (await read(machineIdFile)).trim(), hostKeys, hostKeyFiles };
  } finally {
    await client.destroy();
  }
}

/**
 * overlay2 where the kernel and filesystem allow it (here: yes): vfs copies the whole image for
 * every build step, which makes the image builds several times slower.
 */
async function startEngine(netns: string): Promise<Dockerd> {
  try {
    return await startDockerd({ dataRoot: `${DATA_ROOT}-overlay2`, netns, storageDriver: 'overlay2' });
  } catch (err) {
    process.stdout.write(`overlay2 storage unavailable, using vfs: ${(err as Error).message.split('\n').at(-2) ?? ''}\n`);
    return startDockerd({ dataRoot: `${DATA_ROOT}-vfs`, netns });
  }
}

beforeAll(async () => {
  await run('docker-compose', ['version']).catch((err: Error) => {
    throw new Error(`docker-compose (Debian 12's compose v1) is needed: bash scripts/setup-host.sh test (${err.message})`);
  });
  dir = await mkdtemp(join(tmpdir(), 'netboot-dep-'));
  process.stdout.write(`compose test logs: ${dir}\n`);
  segment = await createSegment({ serverIp: SERVER });
  // No IPv6 router on this segment (as in most labs): netboot's own RA helper answers iPXE.
  await startLabDhcp(segment);
  dockerd = await startEngine(segment.ns);

  const base = await timed('offline base image', () => offlineNodeBase(dockerd!));
  await timed('docker build (repo Dockerfile)', () =>
    dockerd!.cli(['build', '--network', 'host', '--build-arg', `BASE=${base}`, '-t', 'netboot:latest', REPO_ROOT]),
  );
  const bootImage = await timed('machine image', () => busyboxBootImage(dockerd!));

  // The config directory as an admin would have it in /etc/netboot (readable by the container's user).
  const configDir = join(dir, 'etc-netboot');
  await run('mkdir', ['-m', '0755', configDir]);
  await chmod(dir, 0o755);
  await writeFile(
    join(configDir, 'netboot.yaml'),
    stringify({
      server: { address: SERVER, httpPort: 8080, dhcp: { mode: 'proxy' }, api: { readToken: READ_TOKEN }, rebootDelay: 0 },
      images: { busybox: { source: `docker:${bootImage}`, cmdline: 'console=ttyS0' } },
      machines: { [MAC]: { hostname: HOSTNAME } },
      defaults: { image: 'busybox', unknown: 'deny' },
    }),
    { mode: 0o644 },
  );
  // The compose file's optional Docker socket lines, pointed at the test engine.
  const override = join(dir, 'docker-compose.override.yml');
  await writeFile(
    override,
    stringify({ services: { netboot: { volumes: ['${DOCKER_SOCKET}:/var/run/docker.sock'], group_add: ['${DOCKER_GID}'] } } }),
  );
  await writeFile(join(dir, 'udhcpc.sh'), '#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/24" dev "$interface" ;; esac\n', { mode: 0o755 });
  composeEnv = {
    ...process.env,
    DOCKER_HOST: dockerd.host,
    NETBOOT_CONFIG_DIR: configDir,
    DOCKER_SOCKET: dockerd.socketPath,
    DOCKER_GID: String((await stat(dockerd.socketPath)).gid),
  };
  composeArgs = ['-p', PROJECT, '-f', join(REPO_ROOT, 'docker-compose.yml'), '-f', override];
  // Every run starts with an empty state volume (an earlier run may have been killed). The cache
  // volume stays: its artifacts are content-addressed, and building the image takes minutes here.
  await compose(['down']).catch(() => undefined);
  await removeStateVolume();
}, 3_600_000);

afterAll(async () => {
  process.stdout.write(`compose test timings (s): ${JSON.stringify(timings)}\n`);
  await vm?.stop().catch(() => undefined);
  if (dockerd && composeArgs) {
    await compose(['down']).catch(() => undefined);
    await removeStateVolume();
  }
  await dockerd?.stop();
  await segment?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('docker-compose deployment', () => {
  it('serves from the container on the host network: a VM boots to userspace; after down/up the machine keeps its machine-id and SSH host keys, which a fresh state volume changes', async () => {
    await timed('docker-compose up -d', () => compose(['up', '-d']));
    const id = await timed('until healthy', () => waitHealthy());

    // Not root. Node holds only the capability to bind 67/69 (bit 10, CAP_NET_BIND_SERVICE); the
    // container allows that and CAP_NET_RAW (bit 13), which the RA helper took: it answers.
    const status = (await dockerd!.cli(['exec', id, 'cat', '/proc/1/status'])).stdout;
    expect(/^Uid:\s+(\d+)/m.exec(status)?.[1]).toBe('10001');
    expect(/^CapEff:\s+(\S+)/m.exec(status)?.[1]).toBe('0000000000000400');
    expect(/^CapBnd:\s+(\S+)/m.exec(status)?.[1]).toBe('0000000000002400');
    const logs = await dockerd!.cli(['logs', id]);
    expect(logs.stdout + logs.stderr).toContain('answering router solicitations of booting machines');

    await timed('image build in the container', () => waitImageReady());

    vm = new Vm(segment!, { name: HOSTNAME, mac: MAC, logDir: dir });
    const marker = await timed('VM boot to userspace', async () => {
      await vm!.start();
      return vm!.waitFor(MARKER, 600_000);
    });
    expect(marker[1]).toBe(HOSTNAME);
    // Its address came from the lab's DHCP server (dnsmasq, .100-.199); netboot only answered PXE.
    expect(marker[5]).toMatch(/^10\.88\.30\.1\d\d\//);
    // Its init powers off; the client namespace below takes the same MAC.
    await vm.stop();

    // TFTP through the host network (per-transfer ports): the BIOS iPXE binary, as PXE ROMs fetch it.
    const kpxe = join(dir, 'undionly.kpxe');
    await segment!.exec('tftp', ['-m', 'binary', SERVER, '-c', 'get', 'undionly.kpxe', kpxe], { timeoutMs: 60_000 });
    expect((await stat(kpxe)).size).toBeGreaterThan(50_000);

    const before = await machineIdentity();
    expect(before.machineId).toMatch(/^[0-9a-f]{32}$/);
    expect(before.hostKeyFiles.some((f) => f.endsWith('_key'))).toBe(true);
    expect(before.hostKeys).toContain('PRIVATE KEY');

    await timed('docker-compose down', () => compose(['down']));
    await timed('docker-compose up -d (again)', () => compose(['up', '-d']));
    const second = await timed('until healthy (again)', () => waitHealthy());
    expect(second).not.toBe(id);

    const after = await machineIdentity();
    expect(after.machineId).toBe(before.machineId);
    expect(after.hostKeyFiles).toEqual(before.hostKeyFiles);
    expect(after.hostKeys).toBe(before.hostKeys);

    // What the volume carries: without it (`down -v`) the same MAC gets another identity.
    await compose(['down']);
    await removeStateVolume();
    await compose(['up', '-d']);
    await waitHealthy();
    const fresh = await machineIdentity();
    expect(fresh.machineId).not.toBe(before.machineId);
    expect(fresh.hostKeys).not.toBe(before.hostKeys);
  }, 1_800_000);
});
