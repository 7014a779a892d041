import { execFile } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { macToHyphens } from '../config/mac.ts';
import { createFileDurable, fsyncTree, renameDurable } from '../fs/atomic-write.ts';
import { ParsedFileCache } from '../fs/parsed-file-cache.ts';

const run = promisify(execFile);

/**
 * Per-install and per-machine state kept in the state dir: the install secret (from which
 * machine-ids and URL signatures are derived) and each machine's SSH host keys. Created
 * once, atomically, then only read: a machine keeps its identity across reboots and
 * server restarts as long as the state dir is kept.
 */

const KEY_FILE = 'netboot.key';

export async function loadInstallKey(stateDir: string): Promise<Buffer> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const file = join(stateDir, KEY_FILE);
  // Durable before it is used: a power cut must not leave an empty key (the server would refuse to start).
  await createFileDurable(file, randomBytes(32), 0o600);
  const key = await readFile(file);
  if (key.length < 32) throw new Error(`${file} is shorter than 32 bytes: delete it to generate a new one (machine-ids and host keys signatures change)`);
  return key;
}

/** 32 hex digits, stable for a MAC and this install, the format of /etc/machine-id. */
export function machineIdFor(key: Buffer, mac: string): string {
  return createHmac('sha256', key).update(`machine-id\0${mac}`).digest('hex').slice(0, 32);
}

export const HOST_KEY_TYPES = ['ed25519', 'ecdsa'] as const;

export interface HostKey {
  type: (typeof HOST_KEY_TYPES)[number];
  privateKey: Buffer;
  publicKey: Buffer;
}

const pending = new Map<string, Promise<HostKey[]>>();

/** Unknown MACs booted by the policy keep their keys apart, at most this many (the oldest go first). */
export const MAX_UNKNOWN_MACHINES = 256;

export interface HostKeyOptions {
  /** Generate the keys when the machine has none yet (only for a machine proven to be itself). */
  create: boolean;
  /** A configured machine (false: an unknown MAC the policy boots). */
  known: boolean;
}

/**
 * The machine's SSH host keys, generated with ssh-keygen on first use when `create` is set;
 * without it, the keys it already has (none: an empty list), so that asking costs nothing.
 */
export function hostKeysFor(stateDir: string, mac: string, options: HostKeyOptions): Promise<HostKey[]> {
  const machinesDir = join(stateDir, options.known ? 'machines' : 'unknown-machines');
  const dir = join(machinesDir, macToHyphens(mac), 'ssh');
  if (!options.create) return readHostKeys(dir).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? [] : Promise.reject(err)));
  let promise = pending.get(dir);
  if (!promise) {
    promise = readOrCreateHostKeys(dir)
      .then(async (keys) => {
        if (!options.known) await pruneOldest(machinesDir, MAX_UNKNOWN_MACHINES);
        return keys;
      })
      .finally(() => pending.delete(dir));
    pending.set(dir, promise);
  }
  return promise;
}

/** Removes the least recently created machine folders beyond `keep`. */
async function pruneOldest(machinesDir: string, keep: number): Promise<void> {
  const names = await readdir(machinesDir).catch(() => [] as string[]);
  if (names.length <= keep) return;
  const aged = await Promise.all(names.map(async (name) => ({ name, at: (await stat(join(machinesDir, name)).catch(() => null))?.mtimeMs ?? 0 })));
  aged.sort((a, b) => a.at - b.at);
  for (const { name } of aged.slice(0, aged.length - keep)) await rm(join(machinesDir, name), { recursive: true, force: true });
}

/** Host key files (ASCII), read again only when they change: a boot storm asks for every machine's keys at once. */
const keyFiles = new ParsedFileCache((text) => Buffer.from(text, 'utf8'), 16384);

/** The keys in `dir`; rejects with code ENOENT when one is missing (or unreadable). */
async function readHostKeys(dir: string): Promise<HostKey[]> {
  return HOST_KEY_TYPES.map((type) => {
    const privatePath = join(dir, `ssh_host_${type}_key`);
    const privateKey = keyFiles.get(privatePath);
    const publicKey = keyFiles.get(`${privatePath}.pub`);
    if (!privateKey || !publicKey) throw Object.assign(new Error(`${privatePath}(.pub): missing or unreadable`), { code: 'ENOENT' });
    return { type, privateKey, publicKey };
  });
}

async function readOrCreateHostKeys(dir: string): Promise<HostKey[]> {
  try {
    return await readHostKeys(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const parent = join(dir, '..');
  await mkdir(parent, { recursive: true, mode: 0o700 });
  const tmp = await mkdtemp(join(parent, '.ssh-'));
  try {
    for (const type of HOST_KEY_TYPES) {
      await run('ssh-keygen', ['-q', '-N', '', '-C', 'root@netboot', '-t', type, '-f', join(tmp, `ssh_host_${type}_key`)]);
    }
    // The keys reach the disk before their name appears: a power cut must not leave empty key files.
    await fsyncTree(tmp);
    try {
      await renameDurable(tmp, dir);
    } catch (err) {
      // Another server process won the race: its keys are the machine's keys.
      if (!['EEXIST', 'ENOTEMPTY'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return readHostKeys(dir);
}
