import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../server/config/load.ts';
import type { Config } from '../../server/config/types.ts';
import { isValidImageId, type ArtifactName, type ArtifactStore, type ImageManifestView } from '../../server/http/artifact-store.ts';
import { writeTar } from '../../server/layers/tar.ts';

/** A temp dir removed by `cleanup()`. */
export function tempDir(prefix = 'netboot-http-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Writes `netboot.yaml` (and machine folders) into `dir` and loads it with the real loader. */
export function writeConfig(dir: string, yaml: string, folders: Record<string, Record<string, string | Buffer>> = {}): Config {
  for (const [folder, files] of Object.entries(folders)) {
    for (const [rel, content] of Object.entries(files)) {
      const path = join(dir, 'machines', folder, rel);
      mkdirSync(join(path, '..'), { recursive: true });
      writeFileSync(path, content);
    }
  }
  writeFileSync(join(dir, 'netboot.yaml'), yaml);
  return parseConfig(yaml, join(dir, 'netboot.yaml'));
}

/**
 * The ArtifactStore contract over a plain directory: <root>/<id>/<artifact>, and
 * <root>/<name>.current holding the current id of an image (the real cache's layout too).
 */
export class DirArtifactStore implements ArtifactStore {
  constructor(readonly root: string) {}
  currentId(imageName: string): string | null {
    const file = join(this.root, `${imageName}.current`);
    return existsSync(file) ? readFileSync(file, 'utf8').trim() : null;
  }
  artifactPath(id: string, name: ArtifactName): string | null {
    return isValidImageId(id) ? join(this.root, id, name) : null;
  }
  async manifest(id: string): Promise<ImageManifestView | null> {
    if (!isValidImageId(id)) return null;
    const file = join(this.root, id, 'manifest.json');
    return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as ImageManifestView) : null;
  }
  async list(): Promise<ImageManifestView[]> {
    const out: ImageManifestView[] = [];
    for (const entry of readdirSync(this.root)) {
      const manifest = await this.manifest(entry).catch(() => null);
      if (manifest) out.push(manifest);
    }
    return out;
  }
}

export const IMAGE_PASSWD = 'root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nold:x:1000:1000::/home/old:/bin/sh\n';
export const IMAGE_GROUP = 'root:x:0:\ndaemon:x:1:\nshadow:x:42:\nsudo:x:27:\nold:x:1000:\nnogroup:x:65534:\n';
export const IMAGE_SHADOW = 'root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\nold:$6$abc$def:19000:0:99999:7:::\n';
export const IMAGE_GSHADOW = 'root:*::\ndaemon:*::\nshadow:*::\nsudo:*::\nold:!::\nnogroup:*::\n';

export interface FakeImage {
  id: string;
  /** Random content per artifact, to compare downloads against. */
  files: Partial<Record<ArtifactName, Buffer>>;
}

/**
 * A built image in `store`: a real squashfs (tar2sqfs from a tar holding /etc/passwd,
 * group, shadow, gshadow), random kernel/initrd bytes, a manifest with their sha256.
 */
export function addImage(store: DirArtifactStore, name: string, options: { rootfsPadding?: number; id?: string; current?: boolean } = {}): FakeImage {
  const id = options.id ?? randomBytes(8).toString('hex');
  const dir = join(store.root, id);
  mkdirSync(dir, { recursive: true });
  const etc = (path: string, text: string, mode = 0o644) => ({ type: 'file' as const, path, mode, uid: 0, gid: 0, content: Buffer.from(text) });
  const tar = writeTar([
    { type: 'dir', path: 'etc', mode: 0o755, uid: 0, gid: 0 },
    etc('etc/passwd', IMAGE_PASSWD),
    etc('etc/group', IMAGE_GROUP),
    etc('etc/shadow', IMAGE_SHADOW, 0o640),
    etc('etc/gshadow', IMAGE_GSHADOW, 0o640),
    ...(options.rootfsPadding ? [{ type: 'file' as const, path: 'padding', mode: 0o644, uid: 0, gid: 0, content: randomBytes(options.rootfsPadding) }] : []),
  ]);
  execFileSync('tar2sqfs', ['-q', '-c', 'gzip', '-f', join(dir, 'rootfs.squashfs')], { input: tar });
  const files: FakeImage['files'] = {
    vmlinuz: randomBytes(300_000),
    'initrd.img': randomBytes(120_000),
    'rootfs.squashfs': readFileSync(join(dir, 'rootfs.squashfs')),
  };
  const artifacts: ImageManifestView['artifacts'] = {};
  for (const [artifact, content] of Object.entries(files)) {
    writeFileSync(join(dir, artifact), content);
    artifacts[artifact] = { size: content.length, sha256: createHash('sha256').update(content).digest('hex') };
  }
  const manifest: ImageManifestView = { id, name, digest: `sha256:${'ab'.repeat(32)}`, builtAt: '2026-01-01T00:00:00Z', artifacts };
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest));
  files['manifest.json'] = readFileSync(join(dir, 'manifest.json'));
  if (options.current !== false) writeFileSync(join(store.root, `${name}.current`), id);
  return { id, files };
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
