import { execFile } from 'node:child_process';
import { copyFile, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../server/cli/common.ts';
import { loadConfig } from '../../server/config/load.ts';

const run = promisify(execFile);

/**
 * The deployment files checked by the tools that read them, without running them:
 * deploy/netboot.service by `systemd-analyze verify` (systemd 252 is installed here and verify
 * needs no running systemd: it loads the unit against a root holding systemd's own units and
 * the ExecStart program), docker-compose.yml by `docker-compose config`, deploy/netboot.yaml by
 * netboot's config loader. test/deploy/compose.test.ts runs the compose file for real.
 */

const UNIT = join(REPO_ROOT, 'deploy/netboot.service');
const SYSTEMD_UNITS = ['/usr/lib/systemd/system', '/lib/systemd/system'].find((d) => existsSync(join(d, 'sysinit.target')));

let root: string;

/** `systemd-analyze verify` of `unitText` installed as /etc/systemd/system/netboot.service under `root`. */
async function verify(unitText: string): Promise<{ code: number; output: string }> {
  await writeFile(join(root, 'etc/systemd/system/netboot.service'), unitText);
  try {
    const { stdout, stderr } = await run('systemd-analyze', ['verify', '--man=no', `--root=${root}`, 'netboot.service']);
    return { code: 0, output: (stdout + stderr).trim() };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, output: `${e.stdout ?? ''}${e.stderr ?? ''}`.trim() };
  }
}

function unitKeys(text: string): Map<string, string[]> {
  const keys = new Map<string, string[]>();
  let section = '';
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith('#')) continue;
    const header = /^\[(\w+)\]$/.exec(trimmed);
    if (header) section = header[1]!;
    else {
      const eq = trimmed.indexOf('=');
      const key = `${section}.${trimmed.slice(0, eq)}`;
      keys.set(key, [...(keys.get(key) ?? []), trimmed.slice(eq + 1)]);
    }
  }
  return keys;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'netboot-dep-unit-'));
  await mkdir(join(root, 'etc/systemd/system'), { recursive: true });
  await mkdir(join(root, 'usr/lib/systemd'), { recursive: true });
  await mkdir(join(root, 'opt/netboot/bin'), { recursive: true });
  if (SYSTEMD_UNITS) await cp(SYSTEMD_UNITS, join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  // verify checks that ExecStart's program exists and is executable, below the root.
  await copyFile(join(REPO_ROOT, 'bin/netboot'), join(root, 'opt/netboot/bin/netboot'));
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('deploy/netboot.service', () => {
  it('passes systemd-analyze verify with no message; a broken copy does not', async () => {
    expect(SYSTEMD_UNITS, "systemd's units are missing: apt-get install systemd").toBeDefined();
    const text = await readFile(UNIT, 'utf8');
    expect(await verify(text)).toEqual({ code: 0, output: '' });
    // The check reads this file: a bad value and an unknown key are reported with their lines.
    const broken = await verify(text.replace('Restart=on-failure', 'Restart=sometimes').replace('LimitNOFILE=', 'LimitNOFLIE='));
    expect(broken.output).toMatch(/netboot\.service:\d+: Failed to parse service restart specifier/);
    expect(broken.output).toMatch(/Unknown key 'LimitNOFLIE'/);
  });

  it('runs netboot serve on /etc/netboot, restarts on failure, keeps state and cache in systemd-made dirs, with two capabilities (bind below 1024, the RA helper\'s packet socket)', async () => {
    const keys = unitKeys(await readFile(UNIT, 'utf8'));
    expect(keys.get('Service.ExecStart')).toEqual(['/opt/netboot/bin/netboot serve --config /etc/netboot/netboot.yaml']);
    expect(keys.get('Service.Restart')).toEqual(['on-failure']);
    // An invalid config (exit 3) is not retried in a loop.
    expect(keys.get('Service.RestartPreventExitStatus')).toEqual(['3']);
    // The config's defaults (server/config/schema.ts) are exactly these directories.
    expect(keys.get('Service.StateDirectory')).toEqual(['netboot']);
    expect(keys.get('Service.CacheDirectory')).toEqual(['netboot']);
    const config = loadConfig(join(REPO_ROOT, 'deploy/netboot.yaml'));
    expect(config.server.stateDir).toBe('/var/lib/netboot');
    expect(config.server.cacheDir).toBe('/var/cache/netboot');
    expect(keys.get('Service.User')).toEqual(['netboot']);
    expect(keys.get('Service.AmbientCapabilities')).toEqual(['CAP_NET_BIND_SERVICE CAP_NET_RAW']);
    expect(keys.get('Service.CapabilityBoundingSet')).toEqual(['CAP_NET_BIND_SERVICE CAP_NET_RAW']);
    // RLIMIT_NICE 25: the control plane may run at nice -5 (server/threads/priority.ts) without CAP_SYS_NICE.
    expect(keys.get('Service.LimitNICE')).toEqual(['-5']);
    expect(keys.get('Install.WantedBy')).toEqual(['multi-user.target']);
  });
});

describe('docker-compose.yml', () => {
  it('is valid for docker-compose v1 and puts netboot on the host network with NET_BIND_SERVICE and NET_RAW only, the config read-only, state and cache in volumes', async () => {
    const { stdout } = await run('docker-compose', ['-f', join(REPO_ROOT, 'docker-compose.yml'), 'config'], {
      cwd: REPO_ROOT,
      env: { ...process.env, NETBOOT_CONFIG_DIR: '/srv/netboot-config' },
    });
    const config = parse(stdout) as {
      services: Record<string, Record<string, unknown> & { volumes: ({ source: string; target: string; read_only?: boolean } | string)[] }>;
      volumes: Record<string, unknown>;
    };
    const service = config.services.netboot!;
    expect(service.network_mode).toBe('host');
    expect(service.cap_drop).toEqual(['ALL']);
    expect(service.cap_add).toEqual(['NET_BIND_SERVICE', 'NET_RAW']);
    expect(service.restart).toBe('unless-stopped');
    expect(service.security_opt).toBeUndefined();
    expect((service.healthcheck as { test: string[] }).test.join(' ')).toContain('/opt/netboot/deploy/healthcheck.mjs');
    // v1 prints short volume syntax; normalise to (source, target, mode).
    const volumes = service.volumes.map((v) => (typeof v === 'string' ? v : `${v.source}:${v.target}${v.read_only ? ':ro' : ''}`));
    expect(volumes).toContain('/srv/netboot-config:/etc/netboot:ro');
    expect(volumes.some((v) => /^netboot-state:\/var\/lib\/netboot(:rw)?$/.test(v))).toBe(true);
    expect(volumes.some((v) => /^netboot-cache:\/var\/cache\/netboot(:rw)?$/.test(v))).toBe(true);
    expect(volumes.some((v) => v.includes('docker.sock'))).toBe(false);
    expect(Object.keys(config.volumes).sort()).toEqual(['netboot-cache', 'netboot-state']);
  });
});
