/**
 * The initramfs's NBD client for `root: nbd`: our own `netboot-nbd`
 * (native/nbd-client/netboot-nbd.c), compiled here once per source version into a static
 * binary (no libraries to carry: 0.7 MB instead of Debian's nbd-client with its libraries,
 * 5.3 MB). It uses the kernel's netlink interface with a dead-connection timeout and
 * reconnects when the link dies, so a server restart does not fail the machine's reads.
 *
 * Compiled with the host's C compiler (`cc`; Debian: gcc and libc6-dev) into the system temp
 * directory, keyed by the source's hash; a second call in the same process reuses it.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const NBD_CLIENT_SOURCE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'native', 'nbd-client', 'netboot-nbd.c');
/** Where /init finds it (on PATH). */
export const NBD_CLIENT_PATH = 'bin/netboot-nbd';
const COMPILE_FLAGS = ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror'];

export interface InitramfsFile {
  path: string;
  mode: number;
  data: Buffer;
}

/** Hash of what determines the binary: the source and the flags (part of image ids for `root: nbd`). */
export async function nbdClientFingerprint(source = NBD_CLIENT_SOURCE): Promise<string> {
  const hash = createHash('sha256').update(JSON.stringify(COMPILE_FLAGS)).update(await readFile(source));
  return hash.digest('hex').slice(0, 16);
}

const compiled = new Map<string, Promise<string>>();

/** Path of the compiled client, compiling it first if this source version has not been. */
export function compileNbdClient(source = NBD_CLIENT_SOURCE, outDir = join(tmpdir(), 'netboot-native')): Promise<string> {
  let pending = compiled.get(source);
  if (!pending) {
    pending = compile(source, outDir);
    pending.catch(() => compiled.delete(source));
    compiled.set(source, pending);
  }
  return pending;
}

async function compile(source: string, outDir: string): Promise<string> {
  const output = join(outDir, `netboot-nbd-${await nbdClientFingerprint(source)}`);
  if (await stat(output).then((s) => s.isFile(), () => false)) return output;
  await mkdir(outDir, { recursive: true });
  const partial = `${output}.${process.pid}.partial`;
  try {
    await execFileAsync('cc', [...COMPILE_FLAGS, '-o', partial, source]);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === 'ENOENT' ? 'no C compiler (cc) on this host' : (e.stderr ?? e.message).trim();
    throw new Error(`cannot build the initramfs NBD client from ${source}: ${why}. Fix: apt-get install gcc libc6-dev (scripts/setup-host.sh installs them)`);
  }
  await rename(partial, output);
  return output;
}

/** The files `root: nbd` adds to an initramfs: the static client at bin/netboot-nbd. */
export async function nbdClientFiles(source = NBD_CLIENT_SOURCE): Promise<InitramfsFile[]> {
  const binary = await compileNbdClient(source);
  return [{ path: NBD_CLIENT_PATH, mode: 0o755, data: await readFile(binary) }];
}
