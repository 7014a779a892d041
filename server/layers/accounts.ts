import type { UserConfig } from '../config/types.ts';

/**
 * Merges configured users into the image's own /etc/passwd, /etc/group, /etc/shadow and
 * /etc/gshadow: image entries are kept (in their order), configured users are added or
 * replace the entry of the same name, new uids/gids are allocated from 1000 upwards among
 * the ids not in use. Pure: text in, text out.
 */

export interface PasswdEntry {
  name: string;
  password: string;
  uid: number;
  gid: number;
  gecos: string;
  home: string;
  shell: string;
}

export interface GroupEntry {
  name: string;
  password: string;
  gid: number;
  members: string[];
}

export interface AccountFiles {
  passwd: string;
  group: string;
  shadow?: string;
  gshadow?: string;
}

export interface MergedAccounts {
  passwd: PasswdEntry[];
  group: GroupEntry[];
  /** Raw shadow lines (colon-separated fields), image lines first. */
  shadow: string[][];
  gshadow: string[][] | null;
  /** Users from config, resolved: what the layer needs to create homes and authorized_keys. */
  configured: { name: string; uid: number; gid: number; home: string; sshAuthorizedKeys: string[] }[];
}

export class AccountError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AccountError';
  }
}

const FIRST_DYNAMIC_ID = 1000;
const LAST_DYNAMIC_ID = 59999;

function lines(text: string | undefined): string[][] {
  if (!text) return [];
  return text
    .split('\n')
    .filter((line) => line.trim() !== '' && !line.startsWith('#'))
    .map((line) => line.split(':'));
}

export function parsePasswd(text: string): PasswdEntry[] {
  return lines(text)
    .filter((f) => f.length >= 7)
    .map(([name, password, uid, gid, gecos, home, shell]) => ({
      name: name!,
      password: password!,
      uid: Number(uid),
      gid: Number(gid),
      gecos: gecos!,
      home: home!,
      shell: shell!,
    }));
}

export function parseGroup(text: string): GroupEntry[] {
  return lines(text)
    .filter((f) => f.length >= 4)
    .map(([name, password, gid, members]) => ({
      name: name!,
      password: password!,
      gid: Number(gid),
      members: members ? members.split(',').filter(Boolean) : [],
    }));
}

export function formatPasswd(entries: PasswdEntry[]): string {
  return entries.map((e) => `${e.name}:${e.password}:${e.uid}:${e.gid}:${e.gecos}:${e.home}:${e.shell}\n`).join('');
}

export function formatGroup(entries: GroupEntry[]): string {
  return entries.map((e) => `${e.name}:${e.password}:${e.gid}:${e.members.join(',')}\n`).join('');
}

export function formatColonLines(rows: string[][]): string {
  return rows.map((row) => `${row.join(':')}\n`).join('');
}

function allocator(used: Set<number>, what: string): (preferred?: number) => number {
  return (preferred) => {
    if (preferred !== undefined && !used.has(preferred)) {
      used.add(preferred);
      return preferred;
    }
    for (let id = FIRST_DYNAMIC_ID; id <= LAST_DYNAMIC_ID; id++) {
      if (!used.has(id)) {
        used.add(id);
        return id;
      }
    }
    throw new AccountError(`no free ${what} left between ${FIRST_DYNAMIC_ID} and ${LAST_DYNAMIC_ID}`);
  };
}

export function mergeAccounts(image: AccountFiles, users: readonly UserConfig[]): MergedAccounts {
  const passwd = parsePasswd(image.passwd);
  const group = parseGroup(image.group);
  const shadow = lines(image.shadow);
  const gshadow = image.gshadow === undefined ? null : lines(image.gshadow);
  const usedUids = new Set(passwd.map((e) => e.uid));
  const usedGids = new Set(group.map((e) => e.gid));
  const allocUid = allocator(usedUids, 'uid');
  const allocGid = allocator(usedGids, 'gid');
  const configured: MergedAccounts['configured'] = [];

  const seen = new Set<string>();
  for (const user of users) {
    if (seen.has(user.name)) throw new AccountError(`user ${user.name} is configured twice`);
    seen.add(user.name);
    const existing = passwd.find((e) => e.name === user.name);
    let uid: number;
    if (user.uid !== undefined) {
      const holder = passwd.find((e) => e.uid === user.uid && e.name !== user.name);
      if (holder) throw new AccountError(`user ${user.name}: uid ${user.uid} is already used by ${holder.name} in the image`);
      uid = user.uid;
      usedUids.add(uid);
    } else {
      uid = existing?.uid ?? allocUid(undefined);
    }

    // Primary group: the configured gid, else the existing user's, else a user-private group.
    let gid = user.gid ?? existing?.gid;
    if (gid === undefined) {
      const privateGroup = group.find((g) => g.name === user.name);
      gid = privateGroup?.gid ?? allocGid(usedGids.has(uid) ? undefined : uid);
    }
    if (!group.some((g) => g.gid === gid)) {
      if (group.some((g) => g.name === user.name)) throw new AccountError(`user ${user.name}: gid ${gid} does not exist and group ${user.name} has another gid`);
      usedGids.add(gid);
      group.push({ name: user.name, password: 'x', gid, members: [] });
      gshadow?.push([user.name, '!', '', '']);
    }

    const home = user.home ?? existing?.home ?? (user.name === 'root' ? '/root' : `/home/${user.name}`);
    const entry: PasswdEntry = { name: user.name, password: 'x', uid, gid, gecos: existing?.gecos ?? '', home, shell: user.shell };
    if (existing) passwd.splice(passwd.indexOf(existing), 1, entry);
    else passwd.push(entry);

    // '*' disables password login without marking the account locked ('!'), which sshd would refuse for keys too.
    const shadowRow = [user.name, user.passwordHash ?? '*', '', '0', '99999', '7', '', '', ''];
    const shadowIndex = shadow.findIndex((row) => row[0] === user.name);
    if (shadowIndex >= 0) shadow.splice(shadowIndex, 1, shadowRow);
    else shadow.push(shadowRow);

    for (const groupName of user.groups) {
      let target = group.find((g) => g.name === groupName);
      if (!target) {
        target = { name: groupName, password: 'x', gid: allocGid(undefined), members: [] };
        group.push(target);
        gshadow?.push([groupName, '!', '', '']);
      }
      if (!target.members.includes(user.name)) target.members.push(user.name);
      const gsRow = gshadow?.find((row) => row[0] === groupName);
      if (gsRow) {
        const members = (gsRow[3] ?? '').split(',').filter(Boolean);
        if (!members.includes(user.name)) members.push(user.name);
        gsRow[3] = members.join(',');
      }
    }
    configured.push({ name: user.name, uid, gid, home, sshAuthorizedKeys: user.sshAuthorizedKeys });
  }
  return { passwd, group, shadow, gshadow, configured };
}
