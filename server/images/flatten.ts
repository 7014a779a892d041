import { ImageError } from './errors.ts';
import { BadTarError, ByteReader, encodeHeader, readTar, TruncatedTarError, type TarEntry, type TarHeader } from './tar-reader.ts';

/** Reader errors name the entry and offset; this adds the layer. */
function inLayer(layer: Layer, err: unknown): unknown {
  if (err instanceof BadTarError || err instanceof TruncatedTarError) return new ImageError(`layer ${layer.name}: ${err.message}`, { cause: err });
  return err;
}

/**
 * Flattens image layers (bottom first) into the entries of one root filesystem, the way
 * overlayfs would show it, in a single pass over each layer and without extracting anything:
 * layers are read top-down, so the first entry seen for a path wins, and whiteouts
 * (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) hide what lower layers hold. Memory holds
 * the set of paths (not contents).
 *
 * One case needs a second read of a layer: a hard link whose target is hidden by a higher
 * layer still refers to the lower file's content, so it is re-emitted as a regular file with
 * that content (links to the same target then point at it).
 */
export interface Layer {
  /** Human name for errors (e.g. the digest). */
  name: string;
  /** The layer's uncompressed tar, verified; may be called twice. */
  open(): Promise<AsyncIterable<Buffer>>;
}

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash === -1 ? '' : path.slice(0, slash);
}

function baseOf(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** Proper ancestors of a path, nearest first ('' = root is not included). */
function* ancestors(path: string): Generator<string> {
  let p = parentOf(path);
  while (p !== '') {
    yield p;
    p = parentOf(p);
  }
}

export async function* flattenLayers(layers: Layer[]): AsyncGenerator<TarEntry> {
  let layer: Layer | undefined;
  try {
    for await (const entry of flattenLayersRaw(layers, (l) => (layer = l))) {
      const from = layer!;
      yield { ...entry, body: () => bodyInLayer(entry.body(), from) };
    }
  } catch (err) {
    throw layer ? inLayer(layer, err) : err;
  }
}

/** A body cut short (truncated layer) is read by the consumer: its error names the layer too. */
async function* bodyInLayer(body: AsyncIterable<Buffer>, layer: Layer): AsyncGenerator<Buffer> {
  try {
    yield* body;
  } catch (err) {
    throw inLayer(layer, err);
  }
}

async function* flattenLayersRaw(layers: Layer[], current: (layer: Layer) => void): AsyncGenerator<TarEntry> {
  /** Every path already decided by a higher layer -> whether it is a directory. */
  const decided = new Map<string, boolean>();
  /** Paths deleted by whiteouts of higher layers (the path and everything below it). */
  const deleted = new Set<string>();
  /** Directories made opaque by higher layers: lower layers contribute nothing below them. */
  const opaque = new Set<string>();

  const hidden = (path: string): boolean => {
    if (deleted.has(path)) return true;
    for (const a of ancestors(path)) {
      if (deleted.has(a) || opaque.has(a)) return true;
      const isDir = decided.get(a);
      if (isDir === false) return true; // a higher layer replaced the directory by a non-directory
    }
    return false;
  };

  for (let index = layers.length - 1; index >= 0; index--) {
    const layer = layers[index]!;
    current(layer);
    const newDeleted: string[] = [];
    const newOpaque: string[] = [];
    const emittedHere = new Set<string>();
    /** Hard links of this layer whose target this layer does not show: target -> links. */
    const orphanLinks = new Map<string, TarHeader[]>();
    const lowest = index === 0;

    const reader = new ByteReader(await layer.open());
    for await (const entry of readTar(reader)) {
      const { header } = entry;
      const { path } = header;
      const base = baseOf(path);
      if (base.startsWith(WHITEOUT)) {
        if (!lowest) {
          if (base === OPAQUE) newOpaque.push(parentOf(path));
          else newDeleted.push(path.slice(0, path.length - base.length) + base.slice(WHITEOUT.length));
        }
        continue;
      }
      if (path === '') {
        // The root's own attributes: the highest layer that has it wins.
        if (decided.has('')) continue;
      } else if (decided.has(path) || hidden(path)) {
        continue;
      }
      if (header.type === 'link' && !emittedHere.has(header.linkname)) {
        const links = orphanLinks.get(header.linkname) ?? [];
        links.push(header);
        orphanLinks.set(header.linkname, links);
        decided.set(path, false);
        continue;
      }
      decided.set(path, header.type === 'dir');
      emittedHere.add(path);
      yield entry;
    }
    // Read to the end so the layer's digest is checked.
    await reader.drain();

    if (orphanLinks.size) {
      current(layer);
      yield* materialiseLinks(layer, orphanLinks);
    }
    for (const p of newDeleted) deleted.add(p);
    for (const p of newOpaque) opaque.add(p);
  }
}

/** Re-reads a layer to give hard links whose target is hidden the target's content. */
async function* materialiseLinks(layer: Layer, orphans: Map<string, TarHeader[]>): AsyncGenerator<TarEntry> {
  const found = new Set<string>();
  const reader = new ByteReader(await layer.open());
  for await (const entry of readTar(reader)) {
    const links = orphans.get(entry.header.path);
    if (!links || entry.header.type === 'link' || found.has(entry.header.path)) continue;
    found.add(entry.header.path);
    const [first, ...rest] = links as [TarHeader, ...TarHeader[]];
    const target = entry.header;
    yield {
      header: { ...target, path: first.path },
      raw: encodeHeader({ ...target, path: first.path }),
      body: entry.body,
    };
    for (const link of rest) {
      const header: TarHeader = { ...link, linkname: first.path };
      yield { header, raw: encodeHeader({ ...header, size: 0 }), body: emptyBody };
    }
  }
  await reader.drain();
  for (const [target, links] of orphans) {
    if (!found.has(target)) {
      throw new ImageError(`layer ${layer.name}: tar entry ${JSON.stringify(links[0]!.path)}: hard link target ${JSON.stringify(target)} is not a file of this layer (links may only point at files of their own layer)`);
    }
  }
}

async function* emptyBodyGen(): AsyncGenerator<Buffer> {}
const emptyBody = () => emptyBodyGen();
