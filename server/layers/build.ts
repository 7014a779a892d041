import { createHash } from 'node:crypto';
import type { Config, FileAttrs, Machine } from '../config/types.ts';
import { macToHyphens } from '../config/mac.ts';
import { formatColonLines, formatGroup, formatPasswd, mergeAccounts, type AccountFiles, type MergedAccounts } from './accounts.ts';
import { hostKeysFor, machineIdFor } from './machine-state.ts';
import { writeTar, type TarEntry } from './tar.ts';
import { renderTemplate } from './template.ts';
import { DEFAULT_TREE_LIMITS, LayerSourceError, readMachineTree, type TreeLimits } from './tree.ts';

/**
 * The per-machine top layer: every file that makes one machine itself, as an uncompressed
 * tar that /init unpacks into the tmpfs directory used as the upper lowerdir of the overlay.
 * Built on every request from config, the machine's folder and the state dir (cheap: a
 * small folder), so an edited config takes effect at the next boot without any rebuild step.
 */

export interface LayerInput {
  config: Config;
  machine: Machine;
  imageId: string;
  /** The image's own account files, read from its squashfs. */
  imageAccounts: AccountFiles;
  installKey: Buffer;
  stateDir: string;
  serverUrl: string;
  /** true: the full layer (secrets/, SSH host private keys, /etc/shadow and gshadow), only via a signed URL. */
  withSecrets: boolean;
  limits?: TreeLimits;
}

export interface Layer {
  tar: Buffer;
  /** Strong ETag: sha256 of the tar. */
  etag: string;
  entries: TarEntry[];
}

export async function buildLayer(input: LayerInput): Promise<Layer> {
  const entries = await layerEntries(input);
  const tar = writeTar(entries);
  return { tar, etag: `"${createHash('sha256').update(tar).digest('hex')}"`, entries };
}

type Owner = { uid: number; gid: number };
interface Pending {
  entry: TarEntry;
  /** Other keys under which config `files` may name this entry (the .tmpl source, the secrets/ path). */
  aliases: string[];
}

export async function layerEntries(input: LayerInput): Promise<TarEntry[]> {
  const { machine, config } = input;
  const accounts = mergeAccounts(input.imageAccounts, machine.users);
  const root: Owner = { uid: 0, gid: 0 };
  const out = new Map<string, Pending>();
  const put = (entry: TarEntry, aliases: string[] = []) => out.set(entry.path, { entry, aliases });
  const file = (path: string, content: string | Buffer, mode: number, owner: Owner = root) =>
    put({ type: 'file', path, mode, ...owner, content: typeof content === 'string' ? Buffer.from(content) : content });
  const dir = (path: string, mode: number, owner: Owner = root) => put({ type: 'dir', path, mode, ...owner });

  const address = machine.ip ?? '127.0.1.1';
  file('etc/hostname', `${machine.hostname}\n`, 0o644);
  file(
    'etc/hosts',
    `127.0.0.1\tlocalhost\n${address}\t${machine.hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n`,
    0o644,
  );
  file('etc/machine-id', `${machineIdFor(input.installKey, machine.mac)}\n`, 0o444);
  file('etc/passwd', formatPasswd(accounts.passwd), 0o644);
  file('etc/group', formatGroup(accounts.group), 0o644);
  // Password hashes are secrets: only the signed layer carries shadow files.
  if (input.withSecrets) {
    const shadowGid = accounts.group.find((g) => g.name === 'shadow')?.gid ?? 0;
    file('etc/shadow', formatColonLines(accounts.shadow), 0o640, { uid: 0, gid: shadowGid });
    if (accounts.gshadow) file('etc/gshadow', formatColonLines(accounts.gshadow), 0o640, { uid: 0, gid: shadowGid });
  }

  const rootKeys = [...machine.sshAuthorizedKeys, ...(accounts.configured.find((u) => u.name === 'root')?.sshAuthorizedKeys ?? [])];
  if (rootKeys.length) {
    dir('root', 0o700);
    dir('root/.ssh', 0o700);
    file('root/.ssh/authorized_keys', rootKeys.map((k) => `${k.trim()}\n`).join(''), 0o600);
  }
  for (const user of accounts.configured) {
    if (user.name === 'root') continue;
    const home = user.home.replace(/^\/+|\/+$/g, '');
    if (!home || home.split('/').includes('..')) throw new LayerSourceError(`user ${user.name}: home "${user.home}" is not a usable path`);
    const owner = { uid: user.uid, gid: user.gid };
    dir(home, 0o700, owner);
    if (user.sshAuthorizedKeys.length) {
      dir(`${home}/.ssh`, 0o700, owner);
      file(`${home}/.ssh/authorized_keys`, user.sshAuthorizedKeys.map((k) => `${k.trim()}\n`).join(''), 0o600, owner);
    }
  }

  const keys = await hostKeysFor(input.stateDir, machine.mac, { create: input.withSecrets, known: machine.known });
  for (const key of keys) {
    file(`etc/ssh/ssh_host_${key.type}_key.pub`, key.publicKey, 0o644);
    if (input.withSecrets) file(`etc/ssh/ssh_host_${key.type}_key`, key.privateKey, 0o600);
  }

  if (machine.folder) {
    const vars: Record<string, string | number | boolean> = {
      hostname: machine.hostname,
      mac: machine.mac,
      macHyphen: macToHyphens(machine.mac),
      ip: machine.ip ?? '',
      image: machine.image,
      imageId: input.imageId,
      server: input.serverUrl,
      ...machine.vars,
    };
    for (const item of await readMachineTree(machine.folder, input.limits ?? DEFAULT_TREE_LIMITS)) {
      const secret = item.path === 'secrets' || item.path.startsWith('secrets/');
      if (secret && !input.withSecrets) continue;
      const source = item.path;
      let path = secret ? item.path.replace(/^secrets\/?/, '') : item.path;
      if (!path) continue;
      if (item.type === 'dir') {
        if (!out.has(path)) dir(path, 0o755);
        continue;
      }
      if (item.type === 'symlink') {
        put({ type: 'symlink', path, ...root, target: item.target! }, [source]);
        continue;
      }
      let content = item.content!;
      if (path.endsWith('.tmpl')) {
        path = path.slice(0, -'.tmpl'.length);
        content = Buffer.from(renderTemplate(content.toString('utf8'), vars, `${machine.folder}/${source}`));
      }
      const mode = secret ? 0o600 : item.mode & 0o111 ? 0o755 : 0o644;
      put({ type: 'file', path, mode, ...root, content }, [source]);
    }
  }

  applyOverrides(out, machine.files, accounts, config.file);
  addMissingParents(out);
  return [...out.values()].map((p) => p.entry).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function normaliseKey(key: string): string {
  return key.replace(/^\/+|\/+$/g, '');
}

function applyOverrides(out: Map<string, Pending>, files: Record<string, FileAttrs>, accounts: MergedAccounts, configFile: string): void {
  const byAlias = new Map<string, Pending>();
  for (const pending of out.values()) {
    byAlias.set(pending.entry.path, pending);
    for (const alias of pending.aliases) byAlias.set(alias, pending);
  }
  for (const [rawKey, attrs] of Object.entries(files)) {
    const pending = byAlias.get(normaliseKey(rawKey));
    if (!pending) continue; // a path only the image has: modes of image files are the image's business
    if (attrs.mode !== undefined && pending.entry.type !== 'symlink') pending.entry.mode = attrs.mode;
    if (attrs.owner !== undefined) Object.assign(pending.entry, resolveOwner(attrs.owner, accounts, `${configFile}: files.${rawKey}`));
  }
}

export function resolveOwner(spec: string, accounts: MergedAccounts, where: string): Owner {
  const [userPart, groupPart] = spec.split(':') as [string, string | undefined];
  const user = /^\d+$/.test(userPart) ? { uid: Number(userPart), gid: undefined } : accounts.passwd.find((u) => u.name === userPart);
  if (!user) throw new LayerSourceError(`${where}: owner "${spec}": no user ${userPart} in the image or the config`);
  let gid = user.gid;
  if (groupPart !== undefined) {
    const group = /^\d+$/.test(groupPart) ? { gid: Number(groupPart) } : accounts.group.find((g) => g.name === groupPart);
    if (!group) throw new LayerSourceError(`${where}: owner "${spec}": no group ${groupPart} in the image or the config`);
    gid = group.gid;
  }
  return { uid: user.uid, gid: gid ?? 0 };
}

function addMissingParents(out: Map<string, Pending>): void {
  for (const path of [...out.keys()]) {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      if (!out.has(parent)) out.set(parent, { entry: { type: 'dir', path: parent, mode: 0o755, uid: 0, gid: 0 }, aliases: [] });
    }
  }
}
