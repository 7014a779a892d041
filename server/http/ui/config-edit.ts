import { readFile, stat } from 'node:fs/promises';
import { isMap, parseDocument } from 'yaml';
import { ConfigError, formatIssue, parseConfig } from '../../config/load.ts';
import { normalizeMac } from '../../config/mac.ts';
import { writeFileAtomic } from '../../fs/atomic-write.ts';

export class ConfigEditError extends Error {}

/**
 * The config text with one more machine, edited through the yaml Document API so every comment,
 * blank line and quoting choice of the file stays as it was. The result is validated as a whole
 * config (duplicate hostname, unknown image, a MAC already present) before anyone writes it.
 */
export function withMachine(text: string, file: string, entry: { mac: string; hostname: string; image: string }): string {
  const mac = normalizeMac(entry.mac);
  if (!mac) throw new ConfigEditError(`"${entry.mac}" is not a MAC address`);
  const doc = parseDocument(text);
  if (doc.errors.length) throw new ConfigEditError(`the config file does not parse now (${doc.errors[0]!.message.split('\n')[0]}): fix it first`);
  const machines = doc.get('machines', true);
  if (isMap(machines)) {
    for (const pair of machines.items) {
      const key = String((pair.key as { source?: string; value?: unknown } | null)?.source ?? (pair.key as { value?: unknown } | null)?.value ?? '');
      if (normalizeMac(key) === mac) throw new ConfigEditError(`${mac} is already in the config`);
    }
    machines.add(doc.createPair(mac, { hostname: entry.hostname, image: entry.image }));
  } else {
    doc.set('machines', doc.createNode({ [mac]: { hostname: entry.hostname, image: entry.image } }));
  }
  const next = doc.toString();
  try {
    parseConfig(next, file);
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigEditError(err.issues.map(formatIssue).join('; '));
    throw err;
  }
  return next;
}

let writing: Promise<unknown> = Promise.resolve();

/** Adds a machine to the config file on disk (atomically, keeping its mode); the config watcher reloads it. */
export function addMachineToFile(file: string, entry: { mac: string; hostname: string; image: string }): Promise<void> {
  const run = writing.then(async () => {
    const text = await readFile(file, 'utf8');
    const next = withMachine(text, file, entry);
    const mode = (await stat(file)).mode & 0o7777;
    await writeFileAtomic(file, next, mode);
  });
  writing = run.catch(() => undefined);
  return run;
}
