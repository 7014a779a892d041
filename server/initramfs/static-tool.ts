/**
 * Our small C tools for the initramfs (native/): compiled with the host's C compiler (`cc`;
 * Debian: gcc and libc6-dev) into static binaries, so /init carries no libraries for them.
 * Built into the system temp directory, keyed by the source's hash; a second call in the same
 * process reuses the build.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { atBulkPriority } from '../threads/priority.ts';

const execFileAsync = promisify(execFile);

const COMPILE_FLAGS = ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror'];

export interface InitramfsFile {
  path: string;
  mode: number;
  data: Buffer;
}

/** Hash of what determines the binary: the source and the flags (goes into image ids). */
export async function staticToolFingerprint(source: string): Promise<string> {
  const hash = createHash('sha256').update(JSON.stringify(COMPILE_FLAGS)).update(await readFile(source));
  return hash.digest('hex').slice(0, 16);
}

const compiled = new Map<string, Promise<string>>();

/** Path of the compiled tool, compiling it first if this source version has not been. `what` names it in errors. */
export function compileStaticTool(source: string, what: string, outDir = join(tmpdir(), 'netboot-native')): Promise<string> {
  let pending = compiled.get(source);
  if (!pending) {
    pending = compile(source, what, outDir);
    pending.catch(() => compiled.delete(source));
    compiled.set(source, pending);
  }
  return pending;
}

async function compile(source: string, what: string, outDir: string): Promise<string> {
  const output = join(outDir, `${basename(source, '.c')}-${await staticToolFingerprint(source)}`);
  if (await stat(output).then((s) => s.isFile(), () => false)) return output;
  await mkdir(outDir, { recursive: true });
  const partial = `${output}.${process.pid}.partial`;
  try {
    await atBulkPriority(() => execFileAsync('cc', [...COMPILE_FLAGS, '-o', partial, source]));
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === 'ENOENT' ? 'no C compiler (cc) on this host' : (e.stderr ?? e.message).trim();
    throw new Error(`cannot build ${what} from ${source}: ${why}. Fix: apt-get install gcc libc6-dev (scripts/setup-host.sh installs them)`);
  }
  await rename(partial, output);
  return output;
}

/** The tool as an initramfs file: executable at `path` (relative to /, on /init's PATH under bin/). */
export async function staticToolFile(source: string, path: string, what: string): Promise<InitramfsFile> {
  return { path, mode: 0o755, data: await readFile(await compileStaticTool(source, what)) };
}
