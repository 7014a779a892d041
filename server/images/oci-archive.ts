import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { createGunzip } from 'node:zlib';
import { PassThrough, type Readable } from 'node:stream';
import type { Layer } from './flatten.ts';
import { normalisePath, padded, parsePax } from './tar-reader.ts';
import { ImageError } from './errors.ts';
import { atBulkPriority } from '../threads/priority.ts';
import { unprivileged } from './unprivileged.ts';

/**
 * Reads a `docker save` tarball or an OCI image-layout tarball straight from the file, with
 * no engine: the outer tar is indexed by seeking from header to header, then the chosen
 * manifest's layers are streamed (decompressed: gzip, zstd or none) and their digests verified.
 */

interface Member {
  offset: number;
  size: number;
}

export interface OciImage {
  /** Content digest shown to people: the OCI manifest digest, or for a docker-save tarball the config digest (= docker's image Id). */
  digest: string;
  /**
   * sha256 of the config bytes, computed here (never taken from a file name or an index). The
   * config lists every layer's diff id and each layer is checked against it as it streams, so
   * this digest identifies the whole content: it is what the cache id is made from.
   */
  configDigest: string;
  /** Bottom layer first. */
  layers: Layer[];
  /** Sum of the layer blobs' sizes as stored (compressed). */
  totalBytes: number;
  format: 'oci' | 'docker-save';
}

export interface OciReadOptions {
  platform?: string;
  /** Called with the count of stored (compressed) layer bytes read so far. */
  onBytes?: (n: number) => void;
}

async function indexTar(path: string): Promise<Map<string, Member>> {
  const handle = await open(path, 'r');
  try {
    const { size: fileSize } = await handle.stat();
    const members = new Map<string, Member>();
    const block = Buffer.alloc(512);
    let offset = 0;
    let longName: string | undefined;
    let paxPath: string | undefined;
    for (;;) {
      const { bytesRead } = await handle.read(block, 0, 512, offset);
      if (bytesRead === 0) break;
      if (bytesRead < 512) throw new ImageError(`truncated archive ${path}: header cut at byte ${offset}`);
      if (block.every((b) => b === 0)) break;
      const field = (start: number, length: number) => {
        const f = block.subarray(start, start + length);
        const end = f.indexOf(0);
        return f.subarray(0, end === -1 ? length : end).toString('utf8');
      };
      const sizeText = field(124, 12).trim();
      const size = block[124]! & 0x80 ? Number(block.readBigUInt64BE(128)) : parseInt(sizeText || '0', 8);
      const type = String.fromCharCode(block[156]!);
      const dataOffset = offset + 512;
      if (dataOffset + size > fileSize) {
        throw new ImageError(`truncated archive ${path}: member ${field(0, 100)} needs ${size} bytes at ${dataOffset}, file has ${fileSize}`);
      }
      if (type === 'L' || type === 'x') {
        const data = Buffer.alloc(size);
        await handle.read(data, 0, size, dataOffset);
        if (type === 'L') longName = data.toString('utf8').replace(/\0.*$/s, '');
        else paxPath = parsePax(data).path ?? paxPath;
      } else {
        const prefix = block.subarray(257, 263).toString('latin1') === 'ustar\0' ? field(345, 155) : '';
        const name = paxPath ?? longName ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
        if (type === '0' || type === '\0' || type === '7') members.set(normalisePath(name), { offset: dataOffset, size });
        if (type === '1' || type === '2') {
          // docker save links duplicate layers to the first copy: resolve to the target's member.
          const target = members.get(normalisePath(type === '1' ? field(157, 100) : resolveRelative(name, field(157, 100))));
          if (target) members.set(normalisePath(name), target);
        }
        longName = undefined;
        paxPath = undefined;
      }
      offset = dataOffset + padded(size);
    }
    return members;
  } finally {
    await handle.close();
  }
}

function resolveRelative(from: string, target: string): string {
  const parts = normalisePath(from).split('/').slice(0, -1);
  for (const part of target.split('/')) {
    if (part === '..') parts.pop();
    else if (part && part !== '.') parts.push(part);
  }
  return parts.join('/');
}

/** JSON documents (indexes, manifests, configs) are small: a larger one is refused rather than read into memory. */
const MAX_JSON_BYTES = 16 << 20;

async function readJson(path: string, members: Map<string, Member>, name: string, digest?: string): Promise<unknown> {
  return (await readJsonVerified(path, members, name, digest)).doc;
}

/** Reads a JSON member; with `digest`, its bytes must hash to it (blobs are content-addressed). */
async function readJsonVerified(path: string, members: Map<string, Member>, name: string, digest?: string): Promise<{ doc: unknown; digest: string }> {
  const member = members.get(name);
  if (!member) throw new ImageError(`${path}: ${name} is missing from the archive`);
  if (member.size > MAX_JSON_BYTES) throw new ImageError(`${path}: ${name} is ${member.size} bytes, too large for an image document (limit ${MAX_JSON_BYTES})`);
  const handle = await open(path, 'r');
  try {
    const data = Buffer.alloc(member.size);
    await handle.read(data, 0, member.size, member.offset);
    const actual = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    if (digest !== undefined && actual !== digest) throw new ImageError(`${path}: ${name} does not match its digest: expected ${digest}, got ${actual}`);
    return { doc: JSON.parse(data.toString('utf8')), digest: actual };
  } catch (err) {
    if (err instanceof SyntaxError) throw new ImageError(`${path}: ${name} is not valid JSON`);
    throw err;
  } finally {
    await handle.close();
  }
}

function blobPath(digest: string): string {
  const [alg, hex] = digest.split(':');
  if (!alg || !hex || !/^[a-z0-9]+$/.test(alg) || !/^[a-f0-9]+$/.test(hex)) throw new ImageError(`invalid digest ${digest}`);
  return `blobs/${alg}/${hex}`;
}

interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

function platformMatches(descriptor: Descriptor, platform: string): boolean {
  const [os, arch, variant] = platform.split('/');
  const p = descriptor.platform;
  if (!p) return false;
  return p.os === os && p.architecture === arch && (variant === undefined || p.variant === variant);
}

const INDEX_TYPES = new Set([
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
]);

export async function readOciArchive(path: string, options: OciReadOptions = {}): Promise<OciImage> {
  const platform = options.platform ?? 'linux/amd64';
  let members: Map<string, Member>;
  try {
    members = await indexTar(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ImageError(`archive ${path} does not exist`);
    throw err;
  }
  let read = 0;
  const count = (n: number) => {
    read += n;
    options.onBytes?.(read);
  };
  const layerFrom = (name: string, member: Member | undefined, check: Check): Layer => {
    if (!member) throw new ImageError(`${path}: layer ${name} is missing from the archive`);
    return { name, open: async () => openLayer(path, name, member, check, count) };
  };

  if (members.has('index.json')) {
    let descriptor: Descriptor | undefined;
    let doc = (await readJson(path, members, 'index.json')) as { manifests?: Descriptor[]; mediaType?: string };
    // Walk nested indexes down to one image manifest for the platform.
    for (let depth = 0; depth < 4; depth++) {
      const manifests = doc.manifests ?? [];
      const images = manifests.filter((m) => !m.platform || m.platform.os !== 'unknown'); // skip attestations
      let chosen = images.find((m) => platformMatches(m, platform));
      // docker save (25+) lists manifests without a platform: look at each one's config.
      for (const m of images) {
        if (chosen) break;
        if (m.platform || INDEX_TYPES.has(m.mediaType ?? '')) continue;
        const manifest = (await readJson(path, members, blobPath(m.digest))) as { config?: Descriptor; manifests?: unknown };
        if (manifest.manifests || !manifest.config) continue;
        const config = (await readJson(path, members, blobPath(manifest.config.digest))) as { os?: string; architecture?: string; variant?: string };
        if (platformMatches({ ...m, platform: config }, platform)) chosen = m;
      }
      if (!chosen) {
        const have = images.map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}` : m.digest)).join(', ');
        throw new ImageError(`${path}: no manifest for platform ${platform} (has: ${have || 'none'})`);
      }
      const next = (await readJson(path, members, blobPath(chosen.digest))) as { manifests?: Descriptor[]; mediaType?: string; layers?: Descriptor[] };
      if (INDEX_TYPES.has(chosen.mediaType ?? next.mediaType ?? '') || next.manifests) {
        doc = next;
        continue;
      }
      descriptor = chosen;
      const manifest = (await readJson(path, members, blobPath(chosen.digest), chosen.digest)) as { config?: Descriptor; layers?: Descriptor[] };
      if (!manifest.config?.digest) throw new ImageError(`${path}: manifest ${chosen.digest} names no config`);
      const config = await readJsonVerified(path, members, blobPath(manifest.config.digest), manifest.config.digest);
      const diffIds = diffIdsOf(path, config.doc, (manifest.layers ?? []).length);
      const layers = (manifest.layers ?? []).map((l, i) => layerFrom(l.digest, members.get(blobPath(l.digest)), { stored: l.digest, uncompressed: diffIds[i]! }));
      const totalBytes = (manifest.layers ?? []).reduce((sum, l) => sum + (members.get(blobPath(l.digest))?.size ?? 0), 0);
      return { digest: descriptor.digest, configDigest: config.digest, layers, totalBytes, format: 'oci' };
    }
    throw new ImageError(`${path}: image indexes nested too deep`);
  }

  if (members.has('manifest.json')) {
    const entries = (await readJson(path, members, 'manifest.json')) as { Config: string; Layers: string[] }[];
    if (!Array.isArray(entries) || entries.length === 0) throw new ImageError(`${path}: manifest.json lists no image`);
    const configs = await Promise.all(
      entries.map(async (e) => {
        const { doc, digest } = await readJsonVerified(path, members, normalisePath(String(e.Config)));
        return { entry: e, digest, config: doc as { os?: string; architecture?: string; rootfs?: { diff_ids?: string[] } } };
      }),
    );
    const [os, arch] = platform.split('/');
    const chosen = configs.find((c) => c.config.os === os && c.config.architecture === arch);
    if (!chosen) throw new ImageError(`${path}: no image for platform ${platform} (has: ${configs.map((c) => `${c.config.os}/${c.config.architecture}`).join(', ')})`);
    if (!Array.isArray(chosen.entry.Layers)) throw new ImageError(`${path}: manifest.json lists no layers for ${chosen.entry.Config}`);
    const diffIds = diffIdsOf(path, chosen.config, chosen.entry.Layers.length);
    // The id comes from the config's bytes (hashed above), not from its file name.
    const layers = chosen.entry.Layers.map((name, i) => {
      const blob = /^blobs\/(\w+)\/([a-f0-9]+)$/.exec(normalisePath(name));
      return layerFrom(name, members.get(normalisePath(name)), { stored: blob ? `${blob[1]}:${blob[2]}` : undefined, uncompressed: diffIds[i]! });
    });
    const totalBytes = chosen.entry.Layers.reduce((sum, name) => sum + (members.get(normalisePath(name))?.size ?? 0), 0);
    return { digest: chosen.digest, configDigest: chosen.digest, layers, totalBytes, format: 'docker-save' };
  }
  throw new ImageError(`${path}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)`);
}

/** What a layer must hash to: the blob as stored (when it is a content-addressed blob) and its uncompressed tar (the config's diff id). */
type Check = { stored?: string; uncompressed: string };

function diffIdsOf(path: string, config: unknown, layers: number): string[] {
  const ids = (config as { rootfs?: { diff_ids?: unknown } } | null)?.rootfs?.diff_ids;
  if (!Array.isArray(ids) || ids.length !== layers || !ids.every((id) => typeof id === 'string' && /^sha256:[a-f0-9]{64}$/.test(id))) {
    throw new ImageError(`${path}: the image config's rootfs.diff_ids do not list one sha256 per layer (${layers} layers)`);
  }
  return ids as string[];
}

async function* openLayer(path: string, name: string, member: Member, check: Check, count: (n: number) => void): AsyncGenerator<Buffer> {
  if (check.stored !== undefined && !/^sha256:[a-f0-9]{64}$/.test(check.stored)) throw new ImageError(`${path}: layer ${name} has no usable digest (${check.stored})`);
  const stored = createHash('sha256');
  const uncompressed = createHash('sha256');
  const file = member.size === 0 ? PassThrough.from([]) as Readable : createReadStream(path, { start: member.offset, end: member.offset + member.size - 1, highWaterMark: 1 << 20 });
  const head = await firstBytes(path, member);
  let decompressed: Readable;
  let child: ReturnType<typeof spawn> | undefined;
  const tapped = new PassThrough({ highWaterMark: 1 << 20 });
  file.on('data', (chunk: Buffer) => {
    stored.update(chunk);
    count(chunk.length);
  });
  file.on('error', (err: Error) => tapped.destroy(err));
  file.pipe(tapped);
  if (head[0] === 0x1f && head[1] === 0x8b) {
    decompressed = tapped.pipe(createGunzip({ chunkSize: 1 << 20 }));
  } else if (head.readUInt32LE(0) === 0xfd2fb528) {
    // Node 20's zlib has no zstd: the zstd binary does it as a stream.
    child = atBulkPriority(() => spawn('zstd', ['-dcq'], { stdio: ['pipe', 'pipe', 'pipe'], ...unprivileged() }));
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    tapped.pipe(child.stdin!);
    child.stdin!.on('error', () => {});
    const out = new PassThrough({ highWaterMark: 1 << 20 });
    child.stdout!.pipe(out, { end: false });
    child.on('close', (code) => {
      if (code === 0) out.end();
      else out.destroy(new ImageError(`${path}: layer ${name}: zstd failed (${code}): ${stderr.trim()}`));
    });
    decompressed = out;
  } else {
    decompressed = tapped;
  }
  try {
    for await (const chunk of decompressed) {
      uncompressed.update(chunk as Buffer);
      yield chunk as Buffer;
    }
  } catch (err) {
    if (err instanceof ImageError) throw err;
    throw new ImageError(`${path}: layer ${name} cannot be decompressed: ${(err as Error).message}`);
  } finally {
    file.destroy();
    child?.kill();
  }
  const storedDigest = `sha256:${stored.digest('hex')}`;
  if (check.stored !== undefined && storedDigest !== check.stored) {
    throw new ImageError(`${path}: layer ${name} digest mismatch: expected ${check.stored}, got ${storedDigest}`);
  }
  const diffId = `sha256:${uncompressed.digest('hex')}`;
  if (diffId !== check.uncompressed) {
    throw new ImageError(`${path}: layer ${name} digest mismatch: its uncompressed content is ${diffId}, the image config says ${check.uncompressed}`);
  }
}

async function firstBytes(path: string, member: Member): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(4);
    await handle.read(head, 0, Math.min(4, member.size), member.offset);
    return head;
  } finally {
    await handle.close();
  }
}
