/**
 * Records the NBD read trace bench/storm replays with `--root nbd`: one QEMU VM (the lab
 * harness, server/lab) boots the e2e busybox image with `root: nbd` from `netboot serve`,
 * its kernel reading the root over NBD from a recorder (bench/lib/nbd-trace-recorder.ts:
 * netboot's own NBD server with an onRead hook) that the machine's command line points at
 * (`netboot.nbd=`; the last one on the line wins in /init). Every read until the image's
 * userspace marker goes into the fixture, in order, with its time and connection.
 *
 *   node --import tsx bench/storm.ts --record-trace     (root, QEMU; a few minutes under TCG)
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { Lab } from '../../server/lab/lab.ts';
import { stopChild } from '../../server/lab/netns.ts';
import { cleanupOnInterrupt } from './interrupt.ts';
import { NO_DOCKER_ENV, prepareStormCache, stormImageId } from './storm-image.ts';
import type { NbdTrace } from './storm-trace.ts';

const REPO = join(import.meta.dirname, '../..');
export const TRACE_FIXTURE = join(REPO, 'bench/fixtures/storm-nbd-trace.json');
const SERVER_IP = '10.88.23.1';
const RECORDER_PORT = 10900;
const MAC = '52:54:00:88:23:01';
const MARKER = /NETBOOT-E2E-UP /;

export async function recordNbdTrace(): Promise<void> {
  const workDir = await mkdtemp(join(tmpdir(), 'storm-record-'));
  let lab: Lab | null = null;
  const cleanup = async () => {
    await lab?.close().catch(() => undefined);
    lab = null;
  };
  const unregister = cleanupOnInterrupt(cleanup);
  try {
    const cacheDir = join(workDir, 'cache');
    const imageId = stormImageId();
    const imageDir = await prepareStormCache(cacheDir, ['storm'], imageId);
    const configFile = join(workDir, 'netboot.yaml');
    await writeFile(
      configFile,
      stringify({
        server: { address: SERVER_IP, httpPort: 8080, dhcp: { mode: 'proxy' }, stateDir: join(workDir, 'state'), cacheDir, rebootDelay: 0, imageCheckSeconds: 3600 },
        images: { storm: { source: 'docker:storm/absent:1', cmdline: 'console=ttyS0', root: 'nbd' } },
        machines: { [MAC]: { hostname: 'storm-rec', image: 'storm', cmdline: `netboot.nbd=${SERVER_IP}:${RECORDER_PORT}` } },
        defaults: { unknown: 'deny' },
      }),
    );
    lab = await Lab.start({ configFile, logDir: join(workDir, 'logs'), env: NO_DOCKER_ENV });
    const recorder = lab.segment.spawn('node', ['--import', 'tsx', join(REPO, 'bench/lib/nbd-trace-recorder.ts'), join(imageDir, 'rootfs.squashfs'), imageId, String(RECORDER_PORT)], { cwd: REPO });
    recorder.stderr!.pipe(process.stderr);
    const reads: { t: number; offset: number; length: number; conn: string }[] = [];
    await new Promise<void>((resolve, reject) => {
      recorder.once('exit', (code) => reject(new Error(`NBD recorder exited with ${code}`)));
      createInterface({ input: recorder.stdout! }).on('line', (line) => {
        if (line.startsWith('ready ')) resolve();
        else if (line.startsWith('{')) reads.push(JSON.parse(line) as (typeof reads)[number]);
      });
    });
    process.stderr.write(`storm: recording the NBD trace; VM console and server log in ${join(workDir, 'logs')}\n`);
    const vm = await lab.bootVm({ name: 'storm-rec', mac: MAC });
    await vm.waitFor(MARKER, 900_000);
    const atMarker = reads.length;
    await vm.stop();
    await stopChild(recorder);
    const conns = [...new Set(reads.map((r) => r.conn))];
    const trace: NbdTrace = {
      imageId,
      recordedAt: new Date().toISOString(),
      how: 'bench/storm.ts --record-trace: QEMU (TCG, SeaBIOS + iPXE) booting the e2e busybox image with root: nbd; reads in the order the server got them, until the userspace marker',
      connections: conns.length,
      reads: reads.slice(0, atMarker).map((r) => [r.offset, r.length, conns.indexOf(r.conn)]),
    };
    await writeFile(TRACE_FIXTURE, JSON.stringify(trace) + '\n');
    const bytes = trace.reads.reduce((sum, [, length]) => sum + length, 0);
    process.stdout.write(`storm: ${trace.reads.length} reads, ${(bytes / 2 ** 20).toFixed(1)} MiB over ${conns.length} connection(s) -> ${TRACE_FIXTURE}\n`);
  } finally {
    await cleanup();
    unregister();
    await rm(workDir, { recursive: true, force: true });
  }
}
