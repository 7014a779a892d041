/**
 * The two server stacks bench/storm boots its fleet from, inside the segment namespace at
 * 10.88.20.1 (/22), one after the other: `netboot serve` in full DHCP mode, and the peer stack
 * an admin would build from standard parts: dnsmasq (DHCP with a dhcp-range and dhcp-boot,
 * TFTP), nginx (sendfile, the same files: static per-MAC scripts and layers), nbd-server (the
 * same squashfs). Both are sized for the fleet (TFTP and NBD connection limits >= N), and both
 * send UEFI firmware the same iPXE binary: the one netboot serves (STORM_IPXE_EFI).
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { copyFile, link, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { stopChild, type Segment } from '../../server/lab/netns.ts';
import { selectIpxeDir } from '../../server/ipxe-binaries.ts';
import { NO_DOCKER_ENV } from './storm-image.ts';

const run = promisify(execFile);
const REPO = join(import.meta.dirname, '../..');

export const SERVER_IP = '10.88.20.1';
export const CLIENT_IP = '10.88.20.2';
export const PREFIX = 22;
export const NETMASK = '255.255.252.0';
export const POOL = { start: '10.88.21.1', end: '10.88.23.254' };
/** Routed as local in the client namespace (AnyIP), so a machine can use its leased address as source. */
export const POOL_ROUTES = ['10.88.21.0/24', '10.88.22.0/23'];
export const HTTP_PORT = 8080;
const BASE = `http://${SERVER_IP}:${HTTP_PORT}`;

export interface StackSpec {
  workDir: string;
  segment: Segment;
  macs: string[];
  root: 'ram' | 'nbd';
  imageId: string;
  /** The cache dir holding imageId (bench/lib/storm-image.ts). */
  cacheDir: string;
  /** netboot's server.tftp.maxTransfers and dnsmasq's --tftp-max. */
  tftpMaxTransfers: number;
  /** netboot's server.admission.maxRootStreams; undefined: its default. */
  maxRootStreams?: number;
}

/** Not beside netboot.yaml: the server watches its config's folder, and every log line would wake the watcher. */
export const netbootLogPath = (workDir: string) => join(workDir, 'netboot-serve.log');
/** nginx's access log, `$request_uri $status $request_time` per line. */
export const nginxAccessLogPath = (workDir: string) => join(workDir, 'peer', 'nginx-access.log');

export interface RunningStack {
  name: 'netboot' | 'peer';
  stop(): Promise<void>;
}

const hyphens = (mac: string) => mac.replace(/:/g, '-');
const ssh = (dir: string) => ['ed25519', 'ecdsa'].flatMap((t) => [`ssh_host_${t}_key`, `ssh_host_${t}_key.pub`]).map((f) => join(dir, f));

async function linkOrCopy(from: string, to: string): Promise<void> {
  await link(from, to).catch(() => copyFile(from, to));
}

/** One set of SSH host keys, made once per run. */
async function hostKeys(workDir: string): Promise<string> {
  const dir = join(workDir, 'hostkeys');
  await mkdir(dir, { recursive: true });
  for (const type of ['ed25519', 'ecdsa']) await run('ssh-keygen', ['-q', '-N', '', '-C', 'root@storm', '-t', type, '-f', join(dir, `ssh_host_${type}_key`)]);
  return dir;
}

async function waitForLog(file: string, pattern: RegExp, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (pattern.test(await readFile(file, 'utf8').catch(() => ''))) return;
    if (child.exitCode !== null) throw new Error(`${file}: the process exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error(`${file}: no ${pattern} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function logTo(child: ChildProcess, file: string): void {
  const out = createWriteStream(file, { flags: 'a' });
  child.stdout?.pipe(out);
  child.stderr?.pipe(out);
}

/**
 * netboot serve, full DHCP mode, every machine in the config. Warm state, as in a reboot
 * storm: each machine already has its SSH host keys (one set shared by all, made here).
 */
export async function startNetboot(spec: StackSpec): Promise<RunningStack> {
  const dir = join(spec.workDir, 'netboot');
  const stateDir = join(dir, 'state');
  const keys = await hostKeys(spec.workDir);
  for (const mac of spec.macs) {
    const target = join(stateDir, 'machines', hyphens(mac), 'ssh');
    await mkdir(target, { recursive: true, mode: 0o700 });
    for (const file of ssh(keys)) await linkOrCopy(file, join(target, file.slice(keys.length + 1)));
  }
  const n = spec.macs.length;
  const configFile = join(dir, 'netboot.yaml');
  await writeFile(
    configFile,
    stringify({
      server: {
        address: SERVER_IP,
        httpPort: HTTP_PORT,
        dhcp: { mode: 'full', pool: { ...POOL, netmask: NETMASK } },
        tftp: { maxTransfers: spec.tftpMaxTransfers },
        ...(spec.maxRootStreams === undefined ? {} : { admission: { maxRootStreams: spec.maxRootStreams } }),
        nbd: { maxConnections: Math.max(256, n) },
        stateDir,
        cacheDir: spec.cacheDir,
        rebootDelay: 0,
        imageCheckSeconds: 3600,
      },
      images: { storm: { source: 'docker:storm/absent:1', cmdline: 'console=ttyS0', root: spec.root } },
      machines: Object.fromEntries(spec.macs.map((mac, i) => [mac, { hostname: `storm-${i + 1}`, image: 'storm' }])),
      defaults: { unknown: 'deny' },
    }),
  );
  const log = netbootLogPath(spec.workDir);
  // STORM_NETBOOT_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`, which NODE_OPTIONS refuses): node flags for the server only.
  const nodeArgs = process.env.STORM_NETBOOT_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];
  const command = nodeArgs.length > 0
    ? ['node', ...nodeArgs, '--import', `file://${REPO}/node_modules/tsx/dist/loader.mjs`, join(REPO, 'server/cli/main.ts')]
    : [join(REPO, 'bin/netboot')];
  const child = spec.segment.spawn(command[0]!, [...command.slice(1), 'serve', '--config', configFile], { env: { ...process.env, ...NO_DOCKER_ENV } });
  logTo(child, log);
  await waitForLog(log, /"msg":"netboot serving"/, child, 60_000);
  return { name: 'netboot', stop: () => stopChild(child, 5000) };
}

/** The per-MAC iPXE script an admin would generate for the peer stack: same kernel, initrd and arguments. */
export function peerScript(mac: string, imageId: string, root: 'ram' | 'nbd'): string {
  const args = [
    'initrd=initrd.img',
    `netboot.server=${BASE}`,
    `netboot.mac=${mac}`,
    `netboot.image=${imageId}`,
    `netboot.root=${root}`,
    `netboot.layer=${BASE}/machines/${hyphens(mac)}/layer.tar`,
    'netboot.token=peer',
    'netboot.init=/sbin/init',
    ...(root === 'nbd' ? [`netboot.nbd=${SERVER_IP}:10809`] : []),
    'console=ttyS0',
  ];
  return [
    '#!ipxe',
    `kernel --name vmlinuz ${BASE}/images/${imageId}/vmlinuz ${args.join(' ')} || goto failed`,
    `initrd --name initrd.img ${BASE}/images/${imageId}/initrd.img || goto failed`,
    'boot || goto failed',
    ':failed',
    'reboot',
    '',
  ].join('\n');
}

/**
 * The iPXE binary UEFI firmware gets from both stacks: netboot's own choice (its bundled build,
 * else the host's). The peer once served Debian 12's older, smaller build (170 KiB against
 * 278 KiB), so netboot's TFTP phase moved 64 % more bytes than the peer's.
 */
export const STORM_IPXE_EFI = join(selectIpxeDir(undefined).dir, 'snponly.efi');

export async function startPeer(spec: StackSpec): Promise<RunningStack> {
  const dir = join(spec.workDir, 'peer');
  const www = join(dir, 'www');
  const tftpRoot = join(dir, 'tftp');
  const n = spec.macs.length;
  await mkdir(join(www, 'images', spec.imageId), { recursive: true });
  await mkdir(tftpRoot, { recursive: true });
  for (const file of ['vmlinuz', 'initrd.img', 'rootfs.squashfs']) {
    await linkOrCopy(join(spec.cacheDir, 'images', spec.imageId, file), join(www, 'images', spec.imageId, file));
  }
  await copyFile(STORM_IPXE_EFI, join(tftpRoot, 'snponly.efi'));
  await writeFile(join(www, 'boot.ipxe'), `#!ipxe\nchain --replace ${BASE}/machines/\${mac:hexhyp}/boot.ipxe\n`);
  // A top layer like netboot's: hostname and SSH host keys, as a tar.
  const layerDir = join(dir, 'layer');
  await mkdir(join(layerDir, 'etc/ssh'), { recursive: true });
  await writeFile(join(layerDir, 'etc/hostname'), 'storm\n');
  const keys = await hostKeys(dir);
  for (const file of ssh(keys)) await copyFile(file, join(layerDir, 'etc/ssh', file.slice(keys.length + 1)));
  const layer = join(dir, 'layer.tar');
  await run('tar', ['-cf', layer, '-C', layerDir, '.']);
  for (const mac of spec.macs) {
    const machineDir = join(www, 'machines', hyphens(mac));
    await mkdir(machineDir, { recursive: true });
    await writeFile(join(machineDir, 'boot.ipxe'), peerScript(mac, spec.imageId, spec.root));
    await linkOrCopy(layer, join(machineDir, 'layer.tar'));
  }

  const nginxConf = join(dir, 'nginx.conf');
  await writeFile(
    nginxConf,
    `user root;
worker_processes auto;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log;
events { worker_connections 8192; }
http {
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  default_type application/octet-stream;
  log_format timed '$request_uri $status $request_time';
  access_log ${nginxAccessLogPath(spec.workDir)} timed;
  client_body_temp_path ${dir}/nginx-body;
  proxy_temp_path ${dir}/nginx-proxy;
  fastcgi_temp_path ${dir}/nginx-fastcgi;
  uwsgi_temp_path ${dir}/nginx-uwsgi;
  scgi_temp_path ${dir}/nginx-scgi;
  server {
    listen ${SERVER_IP}:${HTTP_PORT} backlog=4096;
    root ${www};
    # The machines' events: accepted and dropped (the peer stack keeps no timeline).
    location /api/ { return 204; }
  }
}
`,
  );
  const children: ChildProcess[] = [];
  const stopAll = async () => {
    for (const child of children.reverse()) await stopChild(child, 5000);
    await stopNbdServer();
  };
  let nbdPid: number | null = null;
  const stopNbdServer = async () => {
    if (nbdPid === null) return;
    try {
      process.kill(nbdPid, 'SIGTERM');
    } catch {
      /* gone */
    }
    nbdPid = null;
  };
  try {
    const nginx = spec.segment.spawn('nginx', ['-c', nginxConf, '-p', dir]);
    children.push(nginx);
    logTo(nginx, join(dir, 'nginx.out'));
    const dnsmasqLog = join(dir, 'dnsmasq.log');
    const dnsmasq = spec.segment.spawn('dnsmasq', [
      '--keep-in-foreground',
      '--conf-file=/dev/null',
      '--no-resolv',
      '--no-hosts',
      '--port=0',
      '--user=root',
      '--pid-file=',
      `--log-facility=${dnsmasqLog}`,
      `--interface=${spec.segment.bridge}`,
      '--bind-interfaces',
      `--dhcp-range=${POOL.start},${POOL.end},${NETMASK},1h`,
      `--dhcp-leasefile=${join(dir, 'dnsmasq.leases')}`,
      `--dhcp-lease-max=${Math.max(1000, 2 * n)}`,
      // The pool is this bench's: no ping before each offer (the client namespace answers for every address).
      '--no-ping',
      '--dhcp-userclass=set:ipxe,iPXE',
      '--dhcp-boot=tag:!ipxe,snponly.efi',
      `--dhcp-boot=tag:ipxe,${BASE}/boot.ipxe`,
      '--enable-tftp',
      `--tftp-root=${tftpRoot}`,
      `--tftp-max=${spec.tftpMaxTransfers}`,
    ]);
    children.push(dnsmasq);
    logTo(dnsmasq, join(dir, 'dnsmasq.out'));
    await waitForLog(dnsmasqLog, /started, version/, dnsmasq, 10_000);
    if (spec.root === 'nbd') {
      const conf = join(dir, 'nbd-server.conf');
      const pidFile = join(dir, 'nbd-server.pid');
      await writeFile(conf, `[generic]\nlistenaddr = ${SERVER_IP}\nport = 10809\n[${spec.imageId}]\nexportname = ${join(www, 'images', spec.imageId, 'rootfs.squashfs')}\nreadonly = true\n`);
      await spec.segment.exec('nbd-server', ['-C', conf, '-p', pidFile]);
      for (let i = 0; i < 100 && nbdPid === null; i++) {
        nbdPid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim()) || null;
        if (nbdPid === null) await new Promise((r) => setTimeout(r, 50));
      }
      if (nbdPid === null) throw new Error('nbd-server wrote no pid file');
    }
    for (let i = 0; ; i++) {
      const ok = await spec.segment.exec('curl', ['-sf', '-o', '/dev/null', '-m', '2', `${BASE}/boot.ipxe`]).then(() => true, () => false);
      if (ok) break;
      if (i > 100) throw new Error('nginx does not answer');
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await stopAll();
    throw err;
  }
  return { name: 'peer', stop: stopAll };
}
