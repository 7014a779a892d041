import { readFileSync, statSync, readdirSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { isMap, isScalar, LineCounter, parseDocument, type Document, type Node, type Pair } from 'yaml';
import type { z } from 'zod';
import { ipToInt } from './ipv4.ts';
import { defaultHostname, normalizeMac, macToHyphens } from './mac.ts';
import { configSchema, type RawConfig } from './schema.ts';
import type { Config, Image, Machine } from './types.ts';

/** One problem in a config file, located at the node it is about. */
export interface ConfigIssue {
  file: string;
  line: number;
  col: number;
  /** Dotted path of the offending key, e.g. machines.52:54:00:aa:bb:01.image */
  path: string;
  message: string;
}

export function formatIssue(issue: ConfigIssue): string {
  return `${issue.file}:${issue.line}:${issue.col} ${issue.path ? `${issue.path}: ` : ''}${issue.message}`;
}

export class ConfigError extends Error {
  constructor(readonly issues: ConfigIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
  }
}

/** Reads, validates and normalises a config file. Throws ConfigError listing every problem found. */
export function loadConfig(file: string): Config {
  return loadConfigWithText(file).config;
}

/** loadConfig, also returning the exact text the config came from (one read: the two always match). */
export function loadConfigWithText(file: string): { config: Config; text: string } {
  const absolute = resolve(file);
  let text: string;
  try {
    text = readFileSync(absolute, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (err as Error).message;
    throw new ConfigError([{ file: absolute, line: 1, col: 1, path: '', message: `cannot read config: ${reason}` }]);
  }
  return { config: parseConfig(text, absolute), text };
}

/** Whether YAML text holds nothing at all (empty, blank or only comments), as a file caught mid-save does. */
export function isEmptyConfigText(text: string): boolean {
  return parseDocument(text).contents === null;
}

/** Whether YAML text sets `server.address` itself (rather than leaving it to the 127.0.0.1 default). */
export function setsServerAddress(text: string): boolean {
  try {
    return parseDocument(text).getIn(['server', 'address']) !== undefined;
  } catch {
    return false;
  }
}

/** Validates YAML text as if it were the file `file` (used for error messages and for machine folders). */
export function parseConfig(text: string, file: string): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const issues: ConfigIssue[] = [];
  const at = (offset: number, path: string, message: string) => {
    const { line, col } = lines.linePos(offset);
    issues.push({ file, line, col, path, message });
  };

  for (const error of [...doc.errors, ...doc.warnings]) {
    at(error.pos[0], '', `YAML: ${error.message.split('\n')[0]} — fix the syntax at this position`);
  }
  if (doc.errors.length) throw new ConfigError(issues);
  const root = doc.contents;
  if (root !== null && !isMap(root)) {
    at(0, '', 'the config must be a mapping with keys server, images, machines, defaults');
    throw new ConfigError(issues);
  }

  // MAC keys such as 525400123456 would come out of YAML as numbers (losing leading zeros);
  // take every machine key from its source text instead.
  const machinesNode = doc.get('machines', true);
  const macKeys: { text: string; offset: number }[] = [];
  if (isMap(machinesNode)) {
    for (const pair of machinesNode.items) {
      const key = pair.key as Node | null;
      const start = key?.range?.[0] ?? 0;
      const source = isScalar(key) && typeof key.value === 'string' ? key.value : text.slice(start, key?.range?.[1] ?? start).trim();
      macKeys.push({ text: source, offset: start });
    }
  }
  const plain = doc.toJS() ?? {};
  if (plain && typeof plain === 'object' && plain.machines && typeof plain.machines === 'object' && !Array.isArray(plain.machines)) {
    const values = Object.values(plain.machines as Record<string, unknown>);
    plain.machines = Object.fromEntries(macKeys.map((key, i) => [key.text, values[i]]));
  }

  const parsed = configSchema.safeParse(plain);
  if (!parsed.success) {
    for (const zodIssue of parsed.error.issues) reportZodIssue(doc, zodIssue, at);
    throw new ConfigError(issues);
  }
  const raw = parsed.data;
  const baseDir = dirname(file);
  const config = normalise(raw, file, baseDir, macKeys, doc, at, (offset) => lines.linePos(offset).line);
  if (issues.length) throw new ConfigError(issues);
  return config;
}

type At = (offset: number, path: string, message: string) => void;

function reportZodIssue(doc: Document, issue: z.core.$ZodIssue, at: At): void {
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') {
    for (const key of issue.keys) {
      const keyNode = locateKey(doc, [...path, key]);
      at(keyNode, [...path, key].join('.'), `unknown key "${key}" — remove it or check its spelling`);
    }
    return;
  }
  const offset = locateValue(doc, path);
  let message = issue.message;
  if (issue.code === 'invalid_type' && issue.input === undefined && issue.expected !== 'undefined') message = `required — add ${path.at(-1)}`;
  else if (issue.code === 'invalid_value' && 'values' in issue) message = `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  at(offset, path.join('.'), message);
}

/** Offset of the value at `path`, or of the nearest ancestor that exists. */
function locateValue(doc: Document, path: string[]): number {
  for (let depth = path.length; depth >= 0; depth--) {
    const node = doc.getIn(path.slice(0, depth), true) as Node | undefined;
    if (node?.range) return node.range[0];
    const keyOffset = depth > 0 ? findPair(doc, path.slice(0, depth))?.key : undefined;
    if (keyOffset && (keyOffset as Node).range) return (keyOffset as Node).range![0];
  }
  return 0;
}

/** Offset of the key at the end of `path` (where "unknown key" and bad-MAC errors point). */
function locateKey(doc: Document, path: string[]): number {
  const pair = findPair(doc, path);
  const key = pair?.key as Node | undefined;
  return key?.range?.[0] ?? locateValue(doc, path.slice(0, -1));
}

function findPair(doc: Document, path: string[]): Pair | undefined {
  const parent = path.length > 1 ? doc.getIn(path.slice(0, -1), true) : doc.contents;
  if (!isMap(parent)) return undefined;
  const last = path.at(-1);
  return parent.items.find((pair) => {
    const key = pair.key as Node | null;
    const value = isScalar(key) ? key.value : key;
    return String(value) === last;
  }) as Pair | undefined;
}

function normalise(
  raw: RawConfig,
  file: string,
  baseDir: string,
  macKeys: { text: string; offset: number }[],
  doc: Document,
  at: At,
  lineOf: (offset: number) => number,
): Config {
  const images = new Map<string, Image>(Object.entries(raw.images).map(([name, image]) => [name, { ...image, name }]));
  const imageList = () => [...images.keys()].join(', ') || 'none defined';
  const server = {
    ...raw.server,
    stateDir: resolveDir(baseDir, raw.server.stateDir),
    cacheDir: resolveDir(baseDir, raw.server.cacheDir),
    ipxeDir: raw.server.ipxeDir === undefined ? undefined : resolveDir(baseDir, raw.server.ipxeDir),
  };

  if (raw.defaults.image !== undefined && !images.has(raw.defaults.image)) {
    at(locateValue(doc, ['defaults', 'image']), 'defaults.image', `unknown image "${raw.defaults.image}" (known: ${imageList()})`);
  }
  const defaultImage = raw.defaults.image ?? (images.size === 1 ? [...images.keys()][0] : undefined);

  const machines = new Map<string, Machine>();
  const macSeenAt = new Map<string, number>();
  const hostnameSeenAt = new Map<string, string>();
  const folders = listMachineFolders(baseDir);
  const entries = Object.entries(raw.machines);
  entries.forEach(([key, entry], index) => {
    const keyOffset = macKeys[index]?.offset ?? 0;
    const mac = normalizeMac(key);
    const label = `machines.${key}`;
    if (!mac) {
      at(keyOffset, label, `bad MAC "${key}" — write six hex bytes, e.g. 52:54:00:12:34:56 (also accepted: 52-54-00-12-34-56, 525400123456)`);
      return;
    }
    const firstAt = macSeenAt.get(mac);
    if (firstAt !== undefined) {
      at(keyOffset, label, `duplicate MAC ${mac} (first defined at line ${lineOf(firstAt)}) — keep one entry per machine`);
      return;
    }
    macSeenAt.set(mac, keyOffset);

    const image = entry.image ?? defaultImage;
    if (entry.image !== undefined && !images.has(entry.image)) {
      at(locateValue(doc, ['machines', key, 'image']), `${label}.image`, `unknown image "${entry.image}" (known: ${imageList()})`);
    } else if (image === undefined) {
      at(keyOffset, label, `no image: set machines.${key}.image or defaults.image (known: ${imageList()})`);
    }

    const hostname = entry.hostname ?? defaultHostname(mac);
    const otherMac = hostnameSeenAt.get(hostname.toLowerCase());
    if (otherMac) {
      at(locateValue(doc, ['machines', key, 'hostname']), `${label}.hostname`, `duplicate hostname "${hostname}" (also used by ${otherMac}) — hostnames must be unique`);
    }
    hostnameSeenAt.set(hostname.toLowerCase(), mac);

    const folder = machineFolder(folders, baseDir, hostname, mac, (message) => at(keyOffset, label, message));
    machines.set(mac, {
      mac,
      hostname,
      image: image ?? '',
      ip: entry.ip,
      ...(entry.disk ? { disk: entry.disk } : {}),
      cmdline: [raw.defaults.cmdline, entry.cmdline].filter(Boolean).join(' '),
      vars: { ...raw.defaults.vars, ...entry.vars },
      users: mergeUsers(raw.defaults.users, entry.users),
      sshAuthorizedKeys: [...raw.defaults.sshAuthorizedKeys, ...entry.sshAuthorizedKeys],
      files: { ...raw.defaults.files, ...entry.files },
      folder,
      known: true,
    });
  });

  if (raw.server.dhcp.mode === 'full' && raw.server.dhcp.pool) {
    const { start, end } = raw.server.dhcp.pool;
    if (ipToInt(start) > ipToInt(end)) {
      at(locateValue(doc, ['server', 'dhcp', 'pool', 'end']), 'server.dhcp.pool.end', `pool end ${end} is before start ${start} — swap them`);
    }
  }

  return { file, baseDir, server, images, machines, defaults: { ...raw.defaults, image: defaultImage } };
}

function mergeUsers<T extends { name: string }>(defaults: T[], own: T[]): T[] {
  const byName = new Map(defaults.map((user) => [user.name, user]));
  for (const user of own) byName.set(user.name, user);
  return [...byName.values()];
}

function resolveDir(baseDir: string, dir: string): string {
  return isAbsolute(dir) ? dir : join(baseDir, dir);
}

interface FolderListing {
  names: Set<string>;
  error?: string;
}

function listMachineFolders(baseDir: string): FolderListing {
  try {
    return { names: new Set(readdirSync(join(baseDir, 'machines'))) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { names: new Set() };
    return { names: new Set(), error: `cannot read ${join(baseDir, 'machines')}: ${code}` };
  }
}

/** config/machines/<hostname>/ or config/machines/<aa-bb-cc-dd-ee-ff>/ (or the colon form). */
function machineFolder(listing: FolderListing, baseDir: string, hostname: string, mac: string, fail: (message: string) => void): string | null {
  if (listing.error) {
    fail(listing.error);
    return null;
  }
  const candidates = [hostname, macToHyphens(mac), mac].filter((name) => listing.names.has(name));
  if (candidates.length === 0) return null;
  if (candidates.length > 1) {
    fail(`two folders for one machine: machines/${candidates.join(' and machines/')} — merge them into machines/${hostname}`);
    return null;
  }
  const folder = join(baseDir, 'machines', candidates[0]!);
  try {
    if (!statSync(folder).isDirectory()) {
      fail(`${folder} is not a directory — a machine's files go in a folder of that name`);
      return null;
    }
    readdirSync(folder);
  } catch (err) {
    fail(`machine folder ${folder} is unreadable (${(err as NodeJS.ErrnoException).code}) — fix its permissions`);
    return null;
  }
  return folder;
}
