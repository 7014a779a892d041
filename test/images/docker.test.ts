import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Dockerode from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Image } from '../../server/config/types.ts';
import { silentLogger } from '../../server/log.ts';
import { ImageCache, type BuiltImage } from '../../server/images/cache.ts';
import { watchDockerTag } from '../../server/images/watch.ts';
import { startDockerd, type Dockerd } from '../lab/dockerd.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { debianImage } from '../fixtures/images/debian.ts';
import { diffListings, squashfsListing, tarListing, type Listing } from './listing.ts';

/**
 * The real thing: a private dockerd, the Debian fixture image (kernel + systemd) built from
 * test/fixtures/images/debian/Dockerfile, turned into artifacts through both routes.
 * lz4 keeps the squashfs builds quick; the compressor does not change what is listed.
 */

function image(name: string, source: string, extra: Partial<Image> = {}): Image {
  return { name, source, cmdline: '', root: 'ram', initramfs: 'netboot', init: '/sbin/init', compression: 'lz4', platform: 'linux/amd64', ...extra };
}

async function exportListing(docker: Dockerode, ref: string): Promise<Listing> {
  const container = await docker.createContainer({ Image: ref, Cmd: ['/nothing'] });
  try {
    return await tarListing((await container.export()) as unknown as NodeJS.ReadableStream);
  } finally {
    await container.remove({ force: true });
  }
}

function sha16(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex').slice(0, 16);
}

/** What `docker export` adds for the container's init layer (not part of the image). */
const INIT_FILES = new Set(['dev/console', 'etc/hostname', 'etc/hosts', 'etc/resolv.conf', 'etc/mtab']);
const CONTAINER_INIT = new Set(['.dockerenv', 'etc/hostname', 'etc/hosts', 'etc/resolv.conf', 'etc/mtab', 'dev', 'dev/console', 'dev/pts', 'dev/shm', 'proc', 'sys', 'etc']);

describe('docker: and docker save -> oci-archive: with a real engine and a Debian image', () => {
  let dockerd: Dockerd;
  let tag: string;
  let work: string;
  let cache: ImageCache;
  let viaDocker: BuiltImage;
  let exported: Listing;

  beforeAll(async () => {
    dockerd = await startDockerd();
    tag = await debianImage(dockerd);
    work = await mkdtemp(join(tmpdir(), 'netboot-docker-test-'));
    cache = new ImageCache({ cacheDir: join(work, 'cache'), log: silentLogger });
    viaDocker = await cache.build(image('debian', `docker:${tag}`), { docker: dockerd.docker });
    exported = await exportListing(dockerd.docker, tag);
  }, 900_000);

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
    await dockerd?.stop();
  }, 120_000);

  it('the squashfs holds exactly what docker export holds (minus /.dockerenv), with owners, modes, links, xattrs, contents', async () => {
    const listing = await squashfsListing(cache.artifactPath(viaDocker.id, 'rootfs.squashfs'));
    expect(exported.has('.dockerenv')).toBe(true);
    expect(listing.has('.dockerenv')).toBe(false);
    // The init layer's files are made per container: their mtimes differ from our export's.
    expect(diffListings(exported, listing, (p) => p === '.dockerenv' || INIT_FILES.has(p))).toEqual([]);
    for (const p of INIT_FILES) expect(listing.has(p)).toBe(exported.has(p));
    // The setcap'd ping of the Dockerfile kept its capability.
    expect(listing.get('usr/bin/ping')).toMatch(/security\.capability=/);
    expect(listing.size).toBeGreaterThan(5000);
  });

  it('extracts the kernel, its config and the image initramfs byte for byte', async () => {
    const m = viaDocker.manifest;
    expect(m.kernelVersion).toMatch(/^6\.1\.\d+-\d+-amd64$/);
    expect(m.kernelPath).toBe(`/boot/vmlinuz-${m.kernelVersion}`);
    expect(m.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const inExport = (path: string) => exported.get(path)?.split(' ').at(-1);
    expect(sha16(await readFile(cache.artifactPath(viaDocker.id, 'vmlinuz')))).toBe(inExport(`boot/vmlinuz-${m.kernelVersion}`));
    expect(sha16(await readFile(cache.artifactPath(viaDocker.id, 'config')))).toBe(inExport(`boot/config-${m.kernelVersion}`));
    expect(sha16(await readFile(cache.artifactPath(viaDocker.id, 'image-initrd.img')))).toBe(inExport(`boot/initrd.img-${m.kernelVersion}`));
    expect((await readFile(cache.artifactPath(viaDocker.id, 'config'), 'utf8'))).toMatch(/^CONFIG_RD_ZSTD=y$/m);
  });

  it('a second build of the unchanged image is a cache hit, and no container is left behind', async () => {
    const again = await cache.build(image('debian', `docker:${tag}`), { docker: dockerd.docker });
    expect(again).toMatchObject({ id: viaDocker.id, cached: true });
    const containers = await dockerd.docker.listContainers({ all: true, filters: { label: ['netboot.export=1'] } });
    expect(containers).toEqual([]);
  });

  it('docker save -> oci-archive: gives the same tree as the docker: route', async () => {
    const archive = join(work, 'debian-save.tar');
    await dockerd.cli(['save', '-o', archive, tag]);
    const viaArchive = await cache.build(image('debian-oci', `oci-archive:${archive}`));
    expect(viaArchive.manifest.kernelVersion).toBe(viaDocker.manifest.kernelVersion);
    expect(viaArchive.manifest.artifacts.vmlinuz).toEqual(viaDocker.manifest.artifacts.vmlinuz);
    // docker save of a local image: the digest is the config digest, i.e. the image Id.
    expect(viaArchive.manifest.digest).toBe((await dockerd.docker.getImage(tag).inspect()).Id);
    const fromDocker = await squashfsListing(cache.artifactPath(viaDocker.id, 'rootfs.squashfs'));
    const fromArchive = await squashfsListing(cache.artifactPath(viaArchive.id, 'rootfs.squashfs'));
    // Only the container init layer (empty /etc/hosts etc., /dev, /proc, /sys) may differ.
    const differing = diffListings(fromDocker, fromArchive)
      .map((line) => /^(?:only in \w+|differs): (\S+)/.exec(line)![1]!)
      .filter((p) => !CONTAINER_INIT.has(p));
    expect(differing).toEqual([]);
    expect(fromArchive.size).toBeGreaterThan(5000);
  }, 600_000);

  describe('bad inputs fail clearly and leave the cache untouched', () => {
    const expectUntouched = async () => {
      expect(await cache.currentId('debian')).toBe(viaDocker.id);
      expect((await cache.list()).map((b) => b.id)).toContain(viaDocker.id);
      const rootfs = await readFile(cache.artifactPath(viaDocker.id, 'rootfs.squashfs'));
      expect(createHash('sha256').update(rootfs).digest('hex')).toBe(viaDocker.manifest.artifacts['rootfs.squashfs']!.sha256);
    };

    it('an image the engine does not have and cannot pull', async () => {
      await expect(
        cache.build(image('debian', 'docker:netboot-test/missing:nope'), { docker: dockerd.docker, pull: false }),
      ).rejects.toThrow(/docker:netboot-test\/missing:nope: no such image in the engine at unix:\/\/.*docker\.sock/);
      // A registry on loopback that refuses connections (tests never reach outside 127.0.0.0/8).
      await expect(cache.build(image('debian', 'docker:127.0.0.1:1/netboot-test/missing:nope'), { docker: dockerd.docker })).rejects.toThrow(
        /docker:127\.0\.0\.1:1\/netboot-test\/missing:nope: pull failed: .*127\.0\.0\.1:1/,
      );
      await expectUntouched();
    }, 120_000);

    it('an engine that is not running', async () => {
      const gone = new Dockerode({ socketPath: join(work, 'no-such-docker.sock') });
      await expect(cache.build(image('debian', `docker:${tag}`), { docker: gone })).rejects.toThrow(
        /cannot reach the Docker engine at unix:\/\/.*no-such-docker\.sock \(ENOENT\): is dockerd running\?/,
      );
      await expectUntouched();
    });

    it('an image without a kernel', async () => {
      const base = (await dockerd.docker.listImages({ filters: { reference: ['netboot-test/debian-base'] } }))[0]!;
      await expect(cache.build(image('debian', `docker:${base.RepoTags![0]}`), { docker: dockerd.docker })).rejects.toThrow(
        /^image debian \(sha256:[0-9a-f]{12}\.\.\.\): no kernel: looked in \/boot\/vmlinuz-\*, \/vmlinuz, \/usr\/lib\/modules\/\*\/vmlinuz/,
      );
      await expectUntouched();
    }, 300_000);
  });

  it('watchDockerTag reports when the tag moves to a new image', async () => {
    const moving = 'netboot-test/moving:latest';
    const base = (await dockerd.docker.listImages({ filters: { reference: ['netboot-test/debian-base'] } }))[0]!;
    await dockerd.cli(['tag', base.Id, moving]);
    const seen: string[] = [];
    const engine = countingInspects(dockerd.docker);
    const stop = watchDockerTag({ docker: engine.docker, ref: moving, log: silentLogger, pollMs: 200 }, (change) => {
      seen.push(change.id);
    });
    try {
      // The first look records the current image (the tag must not move before it, or the move
      // is what it records); a second look finds it unchanged and reports nothing.
      await waitUntil(() => engine.looks() >= 2, 'two looks at the tag');
      expect(seen).toEqual([]);
      await dockerd.cli(['tag', tag, moving]);
      const target = (await dockerd.docker.getImage(tag).inspect()).Id;
      await waitUntil(() => seen.length > 0, 'the tag move reported');
      expect(seen).toEqual([target]);
    } finally {
      stop();
      await dockerd.docker.getImage(moving).remove().catch(() => {});
    }
  });
});

/** The engine as the watcher sees it, counting its finished looks at a tag (image inspects). */
function countingInspects(docker: Dockerode): { docker: Dockerode; looks: () => number } {
  let looks = 0;
  const counted = Object.create(docker) as Dockerode;
  counted.getImage = (name: string) => {
    const img = docker.getImage(name);
    const inspect = img.inspect.bind(img) as () => Promise<Dockerode.ImageInspectInfo>;
    (img as { inspect: () => Promise<Dockerode.ImageInspectInfo> }).inspect = async () => {
      try {
        return await inspect();
      } finally {
        looks++;
      }
    };
    return img;
  };
  return { docker: counted, looks: () => looks };
}
