import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Dockerode from 'dockerode';
import { buildImage, openImageCache } from '../../app/images.ts';
import { progressReporter } from '../../app/progress.ts';
import { macToHyphens } from '../../config/mac.ts';
import { checkHostTools, installCommand } from '../../host-tools.ts';
import { debianTarball } from '../../lab/debian.ts';
import { startDockerd, type Dockerd } from '../../lab/dockerd.ts';
import { Lab } from '../../lab/lab.ts';
import { createLogger } from '../../log.ts';
import { EXIT, REPO_ROOT } from '../common.ts';
import type { DemoOptions } from '../demo.ts';
import { loadConfigOrExit } from '../setup.ts';

const run = promisify(execFile);
const DEMO_DIR = join(REPO_ROOT, 'config/images/demo');
const BASE_TAG = 'netboot/debian-base:bookworm';
/** Where the demo keeps what is slow to make (debootstrap tarball, its private engine's images). */
const DEMO_STATE = process.env.NETBOOT_DEMO_STATE ?? '/var/lib/netboot-demo';

export async function runDemo(options: DemoOptions): Promise<void> {
  const say = (text: string) => process.stdout.write(`\x1b[1mnetboot demo:\x1b[0m ${text}\n`);
  const started = Date.now();
  if (process.getuid?.() !== 0) {
    process.stderr.write('netboot demo needs root (network namespaces, QEMU taps, a Docker engine): run it with sudo\n');
    process.exit(EXIT.usage);
  }
  const missing = (await checkHostTools()).filter((tool) => !tool.found && !tool.optional && tool.name !== 'nbd-client');
  if (missing.length) {
    say(`installing ${missing.map((t) => t.debianPackage).join(' ')}`);
    await run('bash', [join(REPO_ROOT, 'scripts/setup-host.sh'), 'all'], { maxBuffer: 64 << 20 }).catch((err) => {
      process.stderr.write(`setup failed; run by hand: ${installCommand(missing)}\n${(err as Error).message}\n`);
      process.exit(EXIT.missingTools);
    });
  }

  const config = loadConfigOrExit(options.config);
  const log = createLogger(options.logLevel === 'info' ? 'warn' : options.logLevel, process.stdout.isTTY === true);
  const [mac, machine] = options.mac ? [options.mac, config.machines.get(options.mac)] : ([...config.machines.entries()][0] ?? []);
  if (!mac || !machine) {
    process.stderr.write(`no machine ${options.mac ?? ''} in ${config.file}\n`);
    process.exit(EXIT.usage);
  }
  const image = config.images.get(machine.image)!;
  const ref = image.source.replace(/^docker:/, '');

  let dockerd: Dockerd | null = null;
  let lab: Lab | null = null;
  const workDir = await mkdtemp(join(tmpdir(), 'netboot-demo-'));
  const cleanup = async () => {
    await lab?.close().catch(() => undefined);
    await dockerd?.stop().catch(() => undefined);
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(EXIT.failure)));
  try {
    // 1. A Docker engine: the host's when one answers, else a private one.
    let docker = new Dockerode();
    if (!(await docker.ping().then(() => true, () => false))) {
      say('no Docker engine running: starting a private one');
      dockerd = await startDockerd({ dataRoot: join(DEMO_STATE, 'dockerd') });
      docker = dockerd.docker;
    }
    const dockerCli = (args: string[]) =>
      run('docker', dockerd ? ['-H', dockerd.host, ...args] : args, { maxBuffer: 256 << 20 });

    // 2. The demo image, from config/images/demo/Dockerfile on a debootstrapped base.
    if (!(await docker.getImage(ref).inspect().then(() => true, () => false))) {
      if (!(await docker.getImage(BASE_TAG).inspect().then(() => true, () => false))) {
        say('making a Debian base with debootstrap (about a minute)');
        const tarball = await debianTarball({ cacheDir: DEMO_STATE });
        await dockerCli(['import', tarball, BASE_TAG]);
      }
      say(`building ${ref} from config/images/demo/Dockerfile (kernel + systemd; a few minutes)`);
      const context = join(workDir, 'context');
      await cp(DEMO_DIR, context, { recursive: true });
      await dockerCli(['build', '--network', 'host', '--build-arg', `BASE=${BASE_TAG}`, '-t', ref, context]);
    }

    // 3. Boot artifacts: kernel, initramfs, squashfs root.
    say(`building boot artifacts of image ${image.name}`);
    const built = await buildImage(openImageCache(config, log), image, log, { docker, onProgress: progressReporter(log, process.stderr.isTTY === true) });
    say(`image ${image.name} is id ${built.id} (kernel ${built.manifest.kernelVersion})`);

    // 4. A private lab running `netboot serve` with the config, and the VM.
    const logDir = join(workDir, 'logs');
    await mkdir(logDir, { recursive: true });
    say(`starting netboot serve in a private network (${config.server.address}); logs in ${logDir}`);
    lab = await Lab.start({ configFile: config.file, logDir, env: dockerd ? { DOCKER_HOST: dockerd.host } : {} });
    const bootStart = Date.now();
    say(`booting VM ${machine.hostname} (${mac}); its console is in ${join(logDir, 'demo.log')}`);
    const vm = await lab.bootVm({ name: 'demo', mac });
    const shown = new Set<string>();
    const poll = setInterval(() => {
      void lab!
        .api<{ lastBoot: { phases: { phase: string; source: string; at: string; bytes?: number; detail?: string }[] } | null }>(`/api/machines/${macToHyphens(mac)}`)
        .then((summary) => {
          for (const p of summary.lastBoot?.phases ?? []) {
            const key = `${p.phase}/${p.source}/${p.at}`;
            if (shown.has(key)) continue;
            shown.add(key);
            const seconds = ((Date.parse(p.at) - bootStart) / 1000).toFixed(1).padStart(6);
            say(`  +${seconds} s  ${p.phase.padEnd(11)} ${p.source.padEnd(5)} ${p.bytes ? `${(p.bytes / 1e6).toFixed(1)} MB ` : ''}${p.detail ?? ''}`);
          }
        })
        .catch(() => undefined);
    }, 1000);
    const match = await vm.waitFor(/netboot demo: (\S+) is up \(root on (\S+), machine-id (\S+)\)/, options.timeout * 1000).finally(() => clearInterval(poll));
    say(`${match[1]} is up: hostname from its top layer, / on ${match[2]}, machine-id ${match[3]}`);
    say(`boot took ${((Date.now() - bootStart) / 1000).toFixed(1)} s (TCG emulation); whole demo ${((Date.now() - started) / 1000).toFixed(0)} s`);
    await cleanup();
    await rm(workDir, { recursive: true, force: true });
    process.exit(EXIT.ok);
  } catch (err) {
    process.stderr.write(`netboot demo failed: ${(err as Error).message}\nlogs kept in ${workDir}\n`);
    await cleanup();
    process.exit(EXIT.failure);
  }
}
