import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, rmSync } from 'node:fs';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type Dockerode from 'dockerode';
import type { Image } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { defaultDocker, exportDockerImage, resolveDockerImage } from './docker-source.ts';
import { ImageError } from './errors.ts';
import { acquireLockFile, isAlive } from '../lock-file.ts';
import { fsyncTree, renameDurable, writeFileAtomic } from '../fs/atomic-write.ts';
import { ParsedFileCache } from '../fs/parsed-file-cache.ts';
import { flattenLayers } from './flatten.ts';
import { ImageProblem, RootInspector } from './inspect.ts';
import { readOciArchive, type OciImage } from './oci-archive.ts';
import { writeSquashfs } from './squashfs-writer.ts';
import { IMAGE_ID_PATTERN } from './image-id.ts';
import { kernelArchitecture, platformArchitecture } from './kernel-arch.ts';
import { BadTarError, TruncatedTarError, type TarEntry } from './tar-reader.ts';
import { writeVerityTree, type VerityInfo } from './verity.ts';

/** Bump when the artifacts a build makes change, so every id changes with it. */
export const PIPELINE_VERSION = 3;

export type Artifact = 'vmlinuz' | 'rootfs.squashfs' | 'rootfs.verity' | 'manifest.json' | 'initrd.img' | 'image-initrd.img' | 'config';
const ARTIFACTS: readonly Artifact[] = ['vmlinuz', 'rootfs.squashfs', 'rootfs.verity', 'initrd.img', 'image-initrd.img', 'config'];

/** For callers holding a name from a URL. */
export function isArtifact(name: string): name is Artifact {
  return name === 'manifest.json' || (ARTIFACTS as readonly string[]).includes(name);
}

export type BuildPhase = 'resolve' | 'pull' | 'squashfs' | 'check' | 'initrd' | 'done';

export interface BuildProgress {
  image: string;
  phase: BuildPhase;
  /** Bytes done in this phase (squashfs: bytes of the source read). */
  bytes: number;
  totalBytes?: number;
  /** Bytes per second over the phase so far. */
  rate?: number;
}

export interface ArtifactInfo {
  size: number;
  sha256: string;
}

export interface Manifest {
  id: string;
  name: string;
  source: string;
  /** Repo digest or image Id (docker), manifest digest (OCI layout), config digest (docker save). */
  digest: string;
  kernelVersion: string;
  /** Every kernel version the image has, newest first. */
  kernelVersions: string[];
  kernelPath: string;
  imageInitrdPath?: string;
  modulesDir?: string;
  init: string;
  initramfs: 'netboot' | 'image';
  compression: string;
  platform: string;
  /** The CPU architecture the kernel is built for, read from its headers (absent: not recognised, or built before this field). */
  architecture?: string;
  artifacts: Partial<Record<Artifact, ArtifactInfo>>;
  /** rootfs.squashfs's dm-verity tree (artifact rootfs.verity): how a machine's disk cache checks each block it reads. */
  verity?: VerityInfo;
  /** Entries in the root filesystem. */
  files: number;
  buildSeconds: number;
  builtAt: string;
  pipelineVersion: number;
}

export interface BuiltImage {
  id: string;
  dir: string;
  manifest: Manifest;
  /** True when the build was a cache hit. */
  cached: boolean;
}

export interface MakeInitrdContext {
  /** The finished rootfs.squashfs (read modules from it with squashfs-reader.ts). */
  squashfs: string;
  kernelVersion: string;
  image: Image;
  /** The temp build dir: write outDir/initrd.img. */
  outDir: string;
  log: Logger;
}

export interface BuildOptions {
  /** The engine for docker: sources (default: DOCKER_HOST or /var/run/docker.sock). */
  docker?: Dockerode;
  onProgress?: (p: BuildProgress) => void;
  makeInitrd?: (ctx: MakeInitrdContext) => Promise<void>;
  /** Anything else the artifacts depend on (e.g. the initramfs builder's version): part of the id. */
  extraInputs?: unknown;
  signal?: AbortSignal;
  /** docker: pull when missing (default true). */
  pull?: boolean;
}

interface ResolvedSource {
  digest: string;
  /** What identifies the content for the cache id. */
  contentId: string;
  totalBytes?: number;
  entries: (onBytes: (n: number) => void) => AsyncIterable<TarEntry>;
}

const ID_PATTERN = IMAGE_ID_PATTERN;

/** Read on every script, layer and artifact request: parsed once per file version (ParsedFileCache). */
const manifests = new ParsedFileCache((text) => JSON.parse(text) as Manifest);
const pointers = new ParsedFileCache((text) => JSON.parse(text) as { id?: unknown });

export class ImageCache {
  readonly imagesDir: string;
  private readonly log: Logger;
  private readonly inflight = new Map<string, Promise<BuiltImage>>();
  /** Locks and temp dirs of this process's builds in progress (see abandonSync). */
  private readonly scratch = new Set<string>();

  constructor(options: { cacheDir: string; log: Logger }) {
    this.imagesDir = join(options.cacheDir, 'images');
    this.log = options.log;
  }

  /** Path of an artifact (it may not exist: initrd.img, image-initrd.img, config are optional). Throws on a malformed id or name. */
  artifactPath(id: string, artifact: Artifact): string {
    if (!ID_PATTERN.test(id)) throw new Error(`invalid image id ${JSON.stringify(id)}`);
    if (!isArtifact(artifact)) throw new Error(`invalid artifact ${JSON.stringify(artifact)}`);
    return join(this.imagesDir, id, artifact);
  }

  /** The id's manifest (shared, never to be changed by the caller), or null. */
  async manifest(id: string): Promise<Manifest | null> {
    return this.manifestNow(id);
  }

  private manifestNow(id: string): Manifest | null {
    if (!ID_PATTERN.test(id)) return null;
    return manifests.get(join(this.imagesDir, id, 'manifest.json'));
  }

  /** The id the image name points at (the last good build), or null. */
  async currentId(name: string): Promise<string | null> {
    let path: string;
    try {
      path = this.pointerPath(name);
    } catch {
      return null;
    }
    const id = pointers.get(path)?.id;
    return typeof id === 'string' && ID_PATTERN.test(id) && this.manifestNow(id) ? id : null;
  }

  async list(): Promise<BuiltImage[]> {
    const names = await readdir(this.imagesDir).catch(() => [] as string[]);
    const out: BuiltImage[] = [];
    for (const id of names.filter((n) => ID_PATTERN.test(n))) {
      const manifest = await this.manifest(id);
      if (manifest) out.push({ id, dir: join(this.imagesDir, id), manifest, cached: true });
    }
    return out.sort((a, b) => b.manifest.builtAt.localeCompare(a.manifest.builtAt));
  }

  /**
   * Removes built ids not in `keepIds`, except every name's current id and the `keepLast`
   * most recently built; also leftovers of interrupted builds. Returns the removed ids.
   */
  async gc(keepIds: Set<string>, keepLast = 0): Promise<string[]> {
    const built = await this.list();
    const keep = new Set(keepIds);
    for (const b of built.slice(0, keepLast)) keep.add(b.id);
    for (const name of await readdir(this.imagesDir).catch(() => [] as string[])) {
      if (name.endsWith('.current')) {
        const id = await this.currentId(name.slice(0, -'.current'.length));
        if (id) keep.add(id);
      }
    }
    const removed: string[] = [];
    for (const b of built) {
      if (keep.has(b.id)) continue;
      await rm(b.dir, { recursive: true, force: true });
      removed.push(b.id);
    }
    await this.removeStaleTemps();
    return removed;
  }

  /** The id a build of `image` would have right now (resolves the source's digest). */
  async idFor(image: Image, options: BuildOptions = {}): Promise<{ id: string; digest: string }> {
    const source = await this.resolveSource(image, options);
    return { id: this.computeId(image, source, options), digest: source.digest };
  }

  async build(image: Image, options: BuildOptions = {}): Promise<BuiltImage> {
    const started = Date.now();
    options.onProgress?.({ image: image.name, phase: 'resolve', bytes: 0 });
    const source = await this.resolveSource(image, options);
    const id = this.computeId(image, source, options);
    const existing = await this.manifest(id);
    if (existing) {
      await this.setCurrent(image.name, id, source.digest);
      options.onProgress?.({ image: image.name, phase: 'done', bytes: 0 });
      return { id, dir: join(this.imagesDir, id), manifest: existing, cached: true };
    }
    let pending = this.inflight.get(id);
    if (!pending) {
      pending = this.buildOnce(image, id, source, options, started).finally(() => this.inflight.delete(id));
      this.inflight.set(id, pending);
    }
    const built = await pending;
    await this.setCurrent(image.name, id, source.digest);
    return built;
  }

  private pointerPath(name: string): string {
    if (!/^[a-z0-9][a-z0-9._-]*$/.test(name)) throw new Error(`invalid image name ${JSON.stringify(name)}`);
    return join(this.imagesDir, `${name}.current`);
  }

  private async setCurrent(name: string, id: string, digest: string): Promise<void> {
    await writeFileAtomic(this.pointerPath(name), JSON.stringify({ id, digest, at: new Date().toISOString() }) + '\n');
  }

  private computeId(image: Image, source: ResolvedSource, options: BuildOptions): string {
    const inputs = {
      pipeline: PIPELINE_VERSION,
      content: source.contentId,
      compression: image.compression,
      kernel: image.kernel ?? null,
      init: image.init,
      initramfs: image.initramfs,
      platform: image.platform,
      nics: image.nics ?? null,
      initrdHook: options.makeInitrd ? true : false,
      extra: options.extraInputs ?? null,
    };
    return createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 16);
  }

  private async resolveSource(image: Image, options: BuildOptions): Promise<ResolvedSource> {
    const colon = image.source.indexOf(':');
    const kind = image.source.slice(0, colon);
    const ref = image.source.slice(colon + 1);
    if (kind === 'docker') {
      const docker = options.docker ?? defaultDocker();
      let pullStart = 0;
      const info = await resolveDockerImage(docker, ref, {
        pull: options.pull,
        signal: options.signal,
        onPullProgress: (p) => {
          pullStart ||= Date.now();
          options.onProgress?.({ image: image.name, phase: 'pull', ...p, rate: p.bytes / Math.max(0.001, (Date.now() - pullStart) / 1000) });
        },
      });
      return {
        digest: info.digest,
        // The engine's image Id is the sha256 of the image config, which lists every layer's diff id:
        // the engine verified those when it stored the layers, so the Id is a content address.
        contentId: `docker:${info.id}`,
        totalBytes: info.size,
        entries: (onBytes) => exportDockerImage(docker, info.id, { onBytes }),
      };
    }
    if (kind === 'oci-archive') {
      let onBytes: (n: number) => void = () => {};
      const oci: OciImage = await readOciArchive(ref, { platform: image.platform, onBytes: (n) => onBytes(n) });
      return {
        digest: oci.digest,
        // The config's own sha256 (computed from its bytes); each layer is checked against the
        // config's diff ids as it streams, so a changed layer fails the build instead of hitting an old id.
        contentId: `config:${oci.configDigest}`,
        totalBytes: oci.totalBytes,
        entries: (cb) => {
          onBytes = cb;
          return flattenLayers(oci.layers);
        },
      };
    }
    throw new ImageError(`image ${image.name}: unsupported source ${image.source} (expected docker:REF or oci-archive:PATH)`);
  }

  private async buildOnce(image: Image, id: string, source: ResolvedSource, options: BuildOptions, started: number): Promise<BuiltImage> {
    await mkdir(this.imagesDir, { recursive: true });
    const log = this.log.child({ image: image.name, id });
    const lockPath = join(this.imagesDir, `.${id}.lock`);
    const unlock = await acquireLockFile(lockPath, {
      signal: options.signal,
      onTakeover: (reason) => log.warn({ phase: 'lock' }, reason),
    });
    this.scratch.add(lockPath);
    const finalDir = join(this.imagesDir, id);
    try {
      const already = await this.manifest(id);
      if (already) return { id, dir: finalDir, manifest: already, cached: true };
      await this.removeTornDir(finalDir, log);
      await this.removeStaleTemps(id);
      const tmp = join(this.imagesDir, `.tmp-${id}-${process.pid}-${randomBytes(4).toString('hex')}`);
      await mkdir(tmp);
      this.scratch.add(tmp);
      try {
        const manifest = await this.produce(image, id, source, options, tmp, log, started);
        await writeFile(join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
        // Every artifact on disk before the name appears: a crash must not publish an id with torn files.
        await fsyncTree(tmp);
        await renameDurable(tmp, finalDir);
        this.scratch.delete(tmp);
        log.info({ phase: 'done', kernel: manifest.kernelVersion, seconds: manifest.buildSeconds }, 'image built');
        options.onProgress?.({ image: image.name, phase: 'done', bytes: manifest.artifacts['rootfs.squashfs']?.size ?? 0 });
        return { id, dir: finalDir, manifest, cached: false };
      } catch (err) {
        await rm(tmp, { recursive: true, force: true });
        this.scratch.delete(tmp);
        throw err;
      }
    } finally {
      await unlock();
      this.scratch.delete(lockPath);
    }
  }

  /**
   * Removes, at once and synchronously, the temp dirs and locks of this process's unfinished
   * builds, and returns them. Only for a process about to exit with a build that can no longer
   * finish (stall-guard.ts): it then leaves nothing behind, as a failed build does.
   */
  abandonSync(): string[] {
    const removed = [...this.scratch];
    // Newest first: a temp dir goes before the lock that guards it.
    for (const path of [...removed].reverse()) rmSync(path, { recursive: true, force: true });
    this.scratch.clear();
    return removed;
  }

  private async produce(image: Image, id: string, source: ResolvedSource, options: BuildOptions, tmp: string, log: Logger, started: number): Promise<Manifest> {
    const label = `image ${image.name} (${source.digest.slice(0, 19)}...)`;
    const inspector = new RootInspector();
    const squashfs = join(tmp, 'rootfs.squashfs');
    const phaseStart = Date.now();
    let lastReport = 0;
    const report = (bytes: number) => {
      const now = Date.now();
      if (now - lastReport < 200) return;
      lastReport = now;
      options.onProgress?.({
        image: image.name,
        phase: 'squashfs',
        bytes,
        totalBytes: source.totalBytes,
        rate: bytes / Math.max(0.001, (now - phaseStart) / 1000),
      });
    };
    log.info({ phase: 'squashfs', source: image.source, digest: source.digest }, 'building image');
    try {
      await writeSquashfs(source.entries(report), squashfs, {
        compressor: image.compression,
        observe: (entry) => inspector.observe(entry.header),
        signal: options.signal,
      });
    } catch (err) {
      if (err instanceof ImageError || err instanceof TruncatedTarError || err instanceof BadTarError) {
        throw new ImageError(`${label}: squashfs step: ${err.message}`, { cause: err });
      }
      throw err;
    }
    options.onProgress?.({ image: image.name, phase: 'check', bytes: 0 });
    let kernel;
    try {
      kernel = inspector.analyse({ kernel: image.kernel, init: image.init, initramfs: image.initramfs, nics: image.nics, label });
    } catch (err) {
      if (err instanceof ImageProblem) throw new ImageError(err.message);
      throw err;
    }
    const architecture = kernelArchitecture(kernel.kernel);
    if (architecture && architecture !== platformArchitecture(image.platform)) {
      throw new ImageError(
        `${label}: its kernel ${kernel.kernelPath} is built for ${architecture}, but the image's platform is ${image.platform}: set platform: linux/${architecture} for it (machines of that architecture only), or use an image built for ${image.platform}`,
      );
    }
    await writeFile(join(tmp, 'vmlinuz'), kernel.kernel);
    if (kernel.config) await writeFile(join(tmp, 'config'), kernel.config);
    if (kernel.imageInitrd) await writeFile(join(tmp, 'image-initrd.img'), kernel.imageInitrd);
    if (options.makeInitrd) {
      options.onProgress?.({ image: image.name, phase: 'initrd', bytes: 0 });
      await options.makeInitrd({ squashfs, kernelVersion: kernel.version, image, outDir: tmp, log });
    }
    const squashfsInfo = await hashFile(squashfs);
    // The salt only has to be fixed per image: the squashfs's own digest keeps builds reproducible.
    const verity = squashfsInfo ? await writeVerityTree(squashfs, join(tmp, 'rootfs.verity'), Buffer.from(squashfsInfo.sha256, 'hex')) : null;
    const artifacts: Manifest['artifacts'] = {};
    for (const artifact of ARTIFACTS) {
      const info = artifact === 'rootfs.squashfs' ? squashfsInfo : await hashFile(join(tmp, artifact));
      if (info) artifacts[artifact] = info;
    }
    return {
      id,
      name: image.name,
      source: image.source,
      digest: source.digest,
      kernelVersion: kernel.version,
      kernelVersions: kernel.versions,
      kernelPath: kernel.kernelPath,
      imageInitrdPath: kernel.imageInitrdPath,
      modulesDir: kernel.modulesDir,
      init: image.init,
      initramfs: image.initramfs,
      compression: image.compression,
      platform: image.platform,
      ...(architecture ? { architecture } : {}),
      artifacts,
      ...(verity ? { verity } : {}),
      files: inspector.pathCount,
      buildSeconds: (Date.now() - started) / 1000,
      builtAt: new Date().toISOString(),
      pipelineVersion: PIPELINE_VERSION,
    };
  }

  /**
   * An id directory without a readable manifest is a build torn by a crash (the manifest is
   * written last, before the rename): nothing can use it, and it would make the rename fail
   * with ENOTEMPTY forever. Called under the id's lock.
   */
  private async removeTornDir(dir: string, log: Logger): Promise<void> {
    const entries = await readdir(dir).catch(() => null);
    if (entries === null) return;
    log.warn({ dir, entries: entries.slice(0, 10) }, 'removing a torn image directory (no manifest: a build was interrupted) before rebuilding it');
    await rm(dir, { recursive: true, force: true });
  }

  /**
   * Temp dirs of interrupted builds (a crash or kill): every one of `id`, whose lock we hold (so
   * no one else is building it, though its pid may be alive and someone else: a container's
   * pid 1); of other ids, those whose process is gone.
   */
  private async removeStaleTemps(id?: string): Promise<void> {
    for (const name of await readdir(this.imagesDir).catch(() => [] as string[])) {
      const m = /^\.tmp-([0-9a-f]{16})-(\d+)-/.exec(name);
      if (m && (m[1] === id || !isAlive(Number(m[2])))) await rm(join(this.imagesDir, name), { recursive: true, force: true });
    }
  }
}

async function hashFile(path: string): Promise<ArtifactInfo | null> {
  const info = await stat(path).catch(() => null);
  if (!info) return null;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return { size: info.size, sha256: hash.digest('hex') };
}
