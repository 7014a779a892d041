/**
 * The files an initramfs needs to run the host's (Debian's) dynamically linked `nbd-client`:
 * the binary and every shared library `ldd` names, including the dynamic loader, at the paths
 * the loader will look for them. Symlinks are followed, so every entry is a regular file.
 *
 * Paths are relative to the archive root (cpio style, no leading slash). The binary goes to
 * `bin/nbd-client`: our initramfs links `usr/sbin` to `../bin`, so it is also
 * `/usr/sbin/nbd-client` there, and a file under a symlinked directory would be ambiguous.
 */
import { execFile } from 'node:child_process';
import { readFile, realpath, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const NBD_CLIENT_BINARY = '/usr/sbin/nbd-client';

export interface InitramfsFile {
  path: string;
  mode: number;
  data: Buffer;
}

/**
 * Shared objects an ELF binary loads, from `ldd` output: absolute paths, the loader included,
 * virtual objects (vdso) left out. Throws if a library is missing ("not found").
 */
export function parseLddOutput(output: string): string[] {
  const paths: string[] = [];
  for (const raw of output.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('linux-vdso') || line.startsWith('linux-gate')) continue;
    if (/=>\s*not found/.test(line)) throw new Error(`ldd: missing shared library: ${line}`);
    const arrow = /=>\s*(\/\S+)/.exec(line);
    const bare = /^(\/\S+)/.exec(line);
    const path = arrow?.[1] ?? bare?.[1];
    if (path) paths.push(path);
  }
  return paths;
}

export async function nbdClientFiles(binary: string = NBD_CLIENT_BINARY): Promise<InitramfsFile[]> {
  let output: string;
  try {
    output = (await execFileAsync('ldd', [binary])).stdout;
  } catch (err) {
    throw new Error(`cannot list the shared libraries of ${binary} (is the nbd-client package installed?): ${(err as Error).message}`);
  }
  const libraries = parseLddOutput(output);
  if (!libraries.some((p) => basename(p).startsWith('ld-'))) throw new Error(`ldd named no dynamic loader for ${binary}`);
  const wanted = new Map<string, string>([['bin/nbd-client', binary]]);
  for (const lib of libraries) wanted.set(lib.replace(/^\/+/, ''), lib);
  const files = await Promise.all(
    [...wanted].map(async ([path, source]): Promise<InitramfsFile> => {
      const real = await realpath(source);
      const [data, info] = await Promise.all([readFile(real), stat(real)]);
      return { path, mode: info.mode & 0o7777, data };
    }),
  );
  return files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
