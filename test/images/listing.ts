import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import tar from 'tar-stream';
import type { Readable } from 'node:stream';

/**
 * A comparable listing of a root filesystem tar: path -> "type mode uid:gid size mtime
 * link/dev xattrs sha256". Parsed with tar-stream (not our own reader) so the checks do not
 * share the pipeline's parser. Hard links are listed as copies of their target (sqfs2tar
 * --no-hard-links output compares equal to a source tar with links).
 */
export type Listing = Map<string, string>;

function norm(path: string): string {
  return path.replace(/^(\.\/)+/, '').replace(/^\/+/, '').replace(/\/+$/, '');
}

export async function tarListing(stream: Readable | NodeJS.ReadableStream, options: { mtime?: boolean } = {}): Promise<Listing> {
  const listing: Listing = new Map();
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, body, next) => {
      const path = norm(header.name);
      const hash = createHash('sha256');
      body.on('data', (d: unknown) => {
        hash.update(d as Buffer);
      });
      body.on('end', () => {
        if (path !== '') {
          const xattrs = Object.entries(header.pax ?? {})
            .filter(([k]) => k.startsWith('SCHILY.xattr.'))
            .map(([k, v]) => `${k.slice(13)}=${Buffer.from(v).toString('hex')}`)
            .sort()
            .join(',');
          if (header.type === 'link') {
            const target = listing.get(norm(header.linkname ?? ''));
            listing.set(path, target ?? `link-to-missing ${header.linkname}`);
          } else {
            const mode = ((header.mode ?? 0) & 0o7777).toString(8);
            const size = header.type === 'file' ? header.size : 0;
            const mtime = options.mtime === false || header.type === 'directory' ? '' : String(Math.floor((header.mtime?.getTime() ?? 0) / 1000));
            const extra =
              header.type === 'symlink'
                ? `-> ${header.linkname}`
                : header.type === 'character-device' || header.type === 'block-device'
                  ? `dev ${header.devmajor},${header.devminor}`
                  : '';
            const content = header.type === 'file' ? hash.digest('hex').slice(0, 16) : '';
            listing.set(path, `${header.type} ${mode} ${header.uid}:${header.gid} ${size} ${mtime} ${extra} [${xattrs}] ${content}`);
          }
        }
        next();
      });
      body.on('error', reject);
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  (stream as Readable).pipe(extract);
  await done;
  return listing;
}

/** Listing of a squashfs image via sqfs2tar (squashfs-tools-ng), hard links as copies. */
export async function squashfsListing(image: string, options: { mtime?: boolean } = {}): Promise<Listing> {
  const child = spawn('sqfs2tar', ['--no-hard-links', image], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 1)));
  const listing = await tarListing(child.stdout, options);
  const code = await exited;
  if (code !== 0) throw new Error(`sqfs2tar failed: ${stderr}`);
  return listing;
}

/** Human-readable differences between two listings (empty when equal). */
export function diffListings(a: Listing, b: Listing, ignore: (path: string) => boolean = () => false): string[] {
  const out: string[] = [];
  for (const [path, value] of a) {
    if (ignore(path)) continue;
    const other = b.get(path);
    if (other === undefined) out.push(`only in first: ${path} ${value}`);
    else if (other !== value) out.push(`differs: ${path}\n   ${value}\n   ${other}`);
  }
  for (const [path, value] of b) if (!ignore(path) && !a.has(path)) out.push(`only in second: ${path} ${value}`);
  return out;
}
