import { execFile } from 'node:child_process';
import { copyFile, cp, lstat, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Dockerd } from '../../server/lab/dockerd.ts';
import { REPO_ROOT } from '../../server/cli/common.ts';
import { recipeKey } from '../fixtures/cache.ts';
import { debianTarball } from '../fixtures/debian.ts';
import { hasImage } from '../fixtures/images/debian.ts';

const run = promisify(execFile);

/**
 * Images the compose test needs, made without any registry (none is reachable here, and the
 * engine runs in a namespace without a route out). Each is tagged by its recipe and reused
 * while the engine's data root keeps it.
 */

/**
 * What the repo's Dockerfile installs when missing: scripts/setup-host.sh's `runtime` list (both
 * stages take it from there) and libcap2-bin (setcap). In the base already, so neither stage needs apt.
 */
async function basePackages(): Promise<string[]> {
  const script = await readFile(join(REPO_ROOT, 'scripts/setup-host.sh'), 'utf8');
  const runtime = /^runtime=\(([^)]*)\)$/m.exec(script)?.[1]?.split(/\s+/).filter(Boolean);
  if (!runtime?.length) throw new Error('no runtime=(...) list in scripts/setup-host.sh');
  return [...runtime, 'libcap2-bin'];
}

/** The pinned iPXE build setup-host.sh unpacks (the Dockerfile's build stage fetches it when missing). */
const IPXE_BUNDLE = 'usr/local/share/netboot/ipxe';

/**
 * The stand-in for `node:20-bookworm-slim`: a debootstrap root of Debian 12 with the packages
 * above, plus this host's Node 20 (the files of its `nodejs` package: node, npm, headers), its
 * npm cache with `npm_config_offline=true` (npm ci takes every package from it) and its iPXE
 * bundle. Returns the tag to pass as BASE.
 */
export async function offlineNodeBase(dockerd: Dockerd): Promise<string> {
  const tarball = await debianTarball({ include: await basePackages() });
  const { stdout: nodeFiles } = await run('dpkg', ['-L', 'nodejs'], { maxBuffer: 64 << 20 });
  const nodeVersion = process.version;
  const npmCache = join((await run('npm', ['config', 'get', 'cache'])).stdout.trim(), '_cacache');
  const lockfile = await readFile(join(REPO_ROOT, 'package-lock.json'));
  const ipxeVersion = await readFile(join('/', IPXE_BUNDLE, 'VERSION'), 'utf8').catch(() => 'none');
  const tag = `netboot-dep/offline-node-base:${recipeKey('offline-node-base', 2, tarball, nodeVersion, recipeKey(lockfile), ipxeVersion)}`;
  if (await hasImage(dockerd, tag)) return tag;

  const debianTag = `netboot-dep/debian:${recipeKey('debian', tarball)}`;
  if (!(await hasImage(dockerd, debianTag))) await dockerd.cli(['import', tarball, debianTag]);
  const context = await mkdtemp(join(tmpdir(), 'netboot-dep-base-'));
  try {
    const list: string[] = [];
    for (const path of nodeFiles.split('\n').filter((p) => p.startsWith('/usr/') && !p.startsWith('/usr/lib/node_modules/npm/'))) {
      // Directories come along with their files (listing one would add all of it): files and links only.
      const stat = await lstat(path).catch(() => null);
      if (stat && !stat.isDirectory()) list.push(path.slice(1));
    }
    // npm as installed (it may have been updated past the package's file list), whole.
    list.push('usr/lib/node_modules/npm', npmCache.slice(1));
    if (existsSync(join('/', IPXE_BUNDLE))) list.push(IPXE_BUNDLE);
    await writeFile(join(context, 'files'), `${list.join('\n')}\n`);
    await run('tar', ['-C', '/', '-cf', join(context, 'host.tar'), '--files-from', join(context, 'files')], { maxBuffer: 64 << 20 });
    await writeFile(
      join(context, 'Dockerfile'),
      ['ARG DEBIAN', 'FROM ${DEBIAN}', 'ADD host.tar /', 'ENV npm_config_offline=true', ''].join('\n'),
    );
    await dockerd.cli(['build', '--network', 'host', '--build-arg', `DEBIAN=${debianTag}`, '-t', tag, context]);
  } finally {
    await rm(context, { recursive: true, force: true });
  }
  return tag;
}

/**
 * The machine's image: test/fixtures/images/busybox (Debian's kernel and modules, busybox, an
 * init that prints `NETBOOT-E2E-UP hostname=...` and powers off) on an imported debootstrap root
 * with linux-image-amd64. Returns its tag.
 */
export async function busyboxBootImage(dockerd: Dockerd): Promise<string> {
  const tarball = await debianTarball({ include: ['linux-image-amd64'] });
  const fixture = join(REPO_ROOT, 'test/fixtures/images/busybox');
  const recipe: string[] = [];
  for (const file of ['Dockerfile', 'init']) recipe.push(await readFile(join(fixture, file), 'utf8'));
  const tag = `netboot-dep/busybox:${recipeKey('busybox', tarball, recipe, recipeKey(await readFile('/bin/busybox')))}`;
  if (await hasImage(dockerd, tag)) return tag;
  const kernelTag = `netboot-dep/kernel:${recipeKey('kernel', tarball)}`;
  if (!(await hasImage(dockerd, kernelTag))) await dockerd.cli(['import', tarball, kernelTag]);
  const context = await mkdtemp(join(tmpdir(), 'netboot-dep-busybox-'));
  try {
    await cp(fixture, context, { recursive: true });
    await copyFile('/bin/busybox', join(context, 'busybox'));
    await dockerd.cli(['build', '--network', 'host', '--build-arg', `BASE=${kernelTag}`, '-t', tag, context]);
  } finally {
    await rm(context, { recursive: true, force: true });
  }
  return tag;
}
