/**
 * Image pipeline vs the plain peer: `docker export | tar2sqfs` of the same image, same
 * compressor, same engine, same run; then a second build of the unchanged image (cache hit).
 *
 *   node --import tsx bench/image-build.ts [--compression zstd|lz4|...] [--rounds N]
 *
 * Uses the test lab's private dockerd and the Debian fixture image (kernel + systemd).
 */
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ImageCache } from '../server/images/cache.ts';
import { silentLogger } from '../server/log.ts';
import type { Image } from '../server/config/types.ts';
import { startDockerd } from '../test/lab/dockerd.ts';
import { debianImage } from '../test/fixtures/images/debian.ts';

const { values } = parseArgs({ options: { compression: { type: 'string', default: 'zstd' }, rounds: { type: 'string', default: '1' } } });
const compression = values.compression!;
const rounds = Number(values.rounds);

function sh(script: string, env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-ec', script], { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, ...env } });
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${script}: exit ${code}`))));
  });
}

const dockerd = await startDockerd();
const work = await mkdtemp(join(tmpdir(), 'netboot-bench-'));
try {
  const tag = await debianImage(dockerd);
  const info = await dockerd.docker.getImage(tag).inspect();
  console.log(`image ${tag} (${(info.Size / 1e6).toFixed(0)} MB), compressor ${compression}, ${availableParallelism()} cores`);
  const results: { round: number; peer: number; pipeline: number; hit: number; peerSize: number; ourSize: number }[] = [];
  for (let round = 1; round <= rounds; round++) {
    const peerOut = join(work, `peer-${round}.squashfs`);
    const cache = new ImageCache({ cacheDir: join(work, `cache-${round}`), log: silentLogger });
    const image: Image = { name: 'bench', source: `docker:${tag}`, cmdline: '', root: 'ram', initramfs: 'netboot', init: '/sbin/init', compression: compression as Image['compression'], platform: 'linux/amd64' };
    const runPeer = async () => {
      const t = performance.now();
      await sh(
        `cid=$(docker -H "$H" create "$TAG" /nothing); trap 'docker -H "$H" rm -f $cid >/dev/null' EXIT; ` +
          `docker -H "$H" export $cid | tar2sqfs --quiet --no-skip --force -c "$COMP" -j "$JOBS" "$OUT"`,
        { H: dockerd.host, TAG: tag, COMP: compression, JOBS: String(availableParallelism()), OUT: peerOut },
      );
      return (performance.now() - t) / 1000;
    };
    const runPipeline = async () => {
      const t = performance.now();
      await cache.build(image, { docker: dockerd.docker });
      return (performance.now() - t) / 1000;
    };
    // Alternate the order and flush dirty pages between runs: the first run's writeback
    // (vfs container copy, squashfs) must not be billed to the second.
    let peer: number;
    let pipeline: number;
    await sh('sync', {});
    if (round % 2 === 1) {
      peer = await runPeer();
      await sh('sync', {});
      pipeline = await runPipeline();
    } else {
      pipeline = await runPipeline();
      await sh('sync', {});
      peer = await runPeer();
    }
    const t = performance.now();
    const again = await cache.build(image, { docker: dockerd.docker });
    const hit = (performance.now() - t) / 1000;
    if (!again.cached) throw new Error('second build was not a cache hit');
    results.push({ round, peer, pipeline, hit, peerSize: (await stat(peerOut)).size, ourSize: again.manifest.artifacts['rootfs.squashfs']!.size });
    await rm(peerOut, { force: true });
    await rm(join(work, `cache-${round}`), { recursive: true, force: true });
  }
  console.log('\nround | peer: docker export piped to tar2sqfs | pipeline (export+scan+tar2sqfs+kernel+manifest) | ratio | cache hit | sizes MB (peer / ours)');
  for (const r of results) {
    console.log(
      `${r.round} | ${r.peer.toFixed(1)} s | ${r.pipeline.toFixed(1)} s | ${(r.pipeline / r.peer).toFixed(3)}x | ${(r.hit * 1000).toFixed(0)} ms | ${(r.peerSize / 1e6).toFixed(1)} / ${(r.ourSize / 1e6).toFixed(1)}`,
    );
  }
} finally {
  await rm(work, { recursive: true, force: true });
  await dockerd.stop();
}
