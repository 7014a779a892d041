import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig } from '../../server/config/load.ts';
import { DEFAULT_CONFIG } from '../../server/cli/common.ts';

function tempConfig(yaml: string, folders: string[] = []): string {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-config-'));
  for (const folder of folders) mkdirSync(join(dir, 'machines', folder), { recursive: true });
  const file = join(dir, 'netboot.yaml');
  writeFileSync(file, yaml);
  return file;
}

function issuesOf(yaml: string, folders: string[] = []): string[] {
  const file = tempConfig(yaml, folders);
  try {
    loadConfig(file);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).message.split('\n').map((line) => line.replace(file, 'F'));
  }
  throw new Error('config was accepted');
}

const images = `images:
  lab:
    source: docker:lab:latest
  ci:
    source: oci-archive:/srv/ci.tar
`;

describe('config loading', () => {
  it('accepts the embedded example config', () => {
    const config = loadConfig(DEFAULT_CONFIG);
    expect(config.images.get('demo')?.source).toBe('docker:netboot/demo:latest');
    const demo1 = config.machines.get('52:54:00:12:34:56');
    expect(demo1?.hostname).toBe('demo1');
    expect(demo1?.folder).toMatch(/config\/machines\/demo1$/);
    expect(config.server.stateDir.startsWith('/')).toBe(true);
  });

  it('normalises every common MAC spelling and applies defaults', () => {
    const config = parseConfig(
      `${images}machines:
  AA-BB-CC-DD-EE-01: { image: ci }
  aabbccddee02: {}
  aabb.ccdd.ee03:
  005400123456: { hostname: zero }
defaults:
  image: lab
  cmdline: quiet
  sshAuthorizedKeys: [ssh-ed25519 AAAA admin]
`,
      '/nonexistent/netboot.yaml',
    );
    expect([...config.machines.keys()]).toEqual(['aa:bb:cc:dd:ee:01', 'aa:bb:cc:dd:ee:02', 'aa:bb:cc:dd:ee:03', '00:54:00:12:34:56']);
    expect(config.machines.get('aa:bb:cc:dd:ee:01')?.image).toBe('ci');
    expect(config.machines.get('aa:bb:cc:dd:ee:02')).toMatchObject({ image: 'lab', cmdline: 'quiet', hostname: 'node-aabbccddee02' });
    expect(config.machines.get('aa:bb:cc:dd:ee:03')?.sshAuthorizedKeys).toEqual(['ssh-ed25519 AAAA admin']);
  });

  it('reports an unknown image, a duplicate MAC and a bad MAC together, each with file:line:col and a fix', () => {
    const issues = issuesOf(`${images}machines:
  52:54:00:aa:bb:01:
    image: lab2
  52-54-00-AA-BB-01:
    hostname: other
  52:54:00:zz:bb:03:
    hostname: third
`);
    expect(issues).toEqual([
      'F:8:12 machines.52:54:00:aa:bb:01.image: unknown image "lab2" (known: lab, ci)',
      'F:9:3 machines.52-54-00-AA-BB-01: duplicate MAC 52:54:00:aa:bb:01 (first defined at line 7) — keep one entry per machine',
      expect.stringMatching(/^F:11:3 machines\.52:54:00:zz:bb:03: bad MAC "52:54:00:zz:bb:03" — write six hex bytes/),
    ]);
  });

  it('rejects duplicate hostnames, unknown keys and bad values at their positions', () => {
    expect(issuesOf(`${images}machines:\n  52:54:00:00:00:01: { hostname: a, image: lab }\n  52:54:00:00:00:02: { hostname: A, image: lab }\n`)).toEqual([
      'F:8:34 machines.52:54:00:00:00:02.hostname: duplicate hostname "A" (also used by 52:54:00:00:00:01) — hostnames must be unique',
    ]);
    expect(issuesOf(`${images}server:\n  httpPrt: 80\n`)).toEqual(['F:7:3 server.httpPrt: unknown key "httpPrt" — remove it or check its spelling']);
    expect(issuesOf(`${images}server:\n  dhcp: { mode: fancy }\n`)).toEqual(['F:7:17 server.dhcp.mode: must be one of "proxy", "full", "off"']);
    expect(issuesOf(`server:\n  dhcp: { mode: full }\n`)[0]).toMatch(/server\.dhcp\.pool: dhcp\.mode full needs a pool/);
  });

  it('refuses kernel arguments that would break the iPXE kernel line, and leaves ${settings} to iPXE', () => {
    expect(issuesOf(`images:\n  lab:\n    source: docker:lab:1\n    cmdline: "quiet\\ninit=/bin/sh"\n`)).toEqual([
      'F:4:14 images.lab.cmdline: must be one line without control characters (tabs, newlines): put all arguments on one line separated by spaces',
    ]);
    expect(issuesOf(`${images}machines:\n  52:54:00:00:00:01: { image: lab, cmdline: "quiet || reboot" }\n`)[0]).toMatch(
      /^F:7:\d+ machines\.52:54:00:00:00:01\.cmdline: must not contain '\|\|' or '&&' on its own/,
    );
    const file = tempConfig(`images:\n  lab:\n    source: docker:lab:1\n    cmdline: ip=\${net0/ip} a||b\n`);
    expect(loadConfig(file).images.get('lab')!.cmdline).toBe('ip=${net0/ip} a||b');
  });

  it('requires an image for every machine when none is the default', () => {
    expect(issuesOf(`${images}machines:\n  52:54:00:00:00:01: {}\n`)).toEqual([
      'F:7:3 machines.52:54:00:00:00:01: no image: set machines.52:54:00:00:00:01.image or defaults.image (known: lab, ci)',
    ]);
  });

  it('reports YAML syntax errors with their position', () => {
    expect(issuesOf('images:\n  lab: [\n')[0]).toMatch(/^F:\d+:\d+ YAML: /);
  });

  it('finds machine folders by hostname or MAC and rejects ambiguous or unreadable ones', () => {
    const ok = loadConfig(tempConfig(`${images}machines:\n  52:54:00:00:00:01: { hostname: a, image: lab }\n  52:54:00:00:00:02: { hostname: b, image: lab }\n`, ['a', '52-54-00-00-00-02']));
    expect(ok.machines.get('52:54:00:00:00:01')?.folder).toMatch(/machines\/a$/);
    expect(ok.machines.get('52:54:00:00:00:02')?.folder).toMatch(/machines\/52-54-00-00-00-02$/);

    expect(issuesOf(`${images}machines:\n  52:54:00:00:00:01: { hostname: a, image: lab }\n`, ['a', '52-54-00-00-00-01'])[0]).toMatch(
      /two folders for one machine: machines\/a and machines\/52-54-00-00-00-01/,
    );

    const file = tempConfig(`${images}machines:\n  52:54:00:00:00:01: { hostname: a, image: lab }\n`);
    mkdirSync(join(file, '..', 'machines'));
    writeFileSync(join(file, '..', 'machines', 'a'), 'not a folder');
    expect(() => loadConfig(file)).toThrow(/machines\/a is not a directory/);
  });

  it('names the file when it cannot be read', () => {
    expect(() => loadConfig('/nonexistent/netboot.yaml')).toThrow('/nonexistent/netboot.yaml:1:1 cannot read config: file not found');
  });
});

describe('per-address limits and the NBD stall timeout', () => {
  it('have defaults and can be set', () => {
    const defaults = parseConfig('', '/x/netboot.yaml').server;
    expect(defaults.tftp.maxTransfersPerAddress).toBe(4);
    expect(defaults.nbd).toMatchObject({ maxConnectionsPerAddress: 8, stallTimeoutSeconds: 120 });
    const set = parseConfig('server:\n  tftp: { maxTransfersPerAddress: 2 }\n  nbd: { maxConnectionsPerAddress: 3, stallTimeoutSeconds: 30 }\n', '/x/netboot.yaml').server;
    expect([set.tftp.maxTransfersPerAddress, set.nbd.maxConnectionsPerAddress, set.nbd.stallTimeoutSeconds]).toEqual([2, 3, 30]);
    expect(() => parseConfig('server:\n  nbd: { maxConnectionsPerAddress: 0 }\n', '/x/netboot.yaml')).toThrow(/maxConnectionsPerAddress/);
  });
});
