import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { EXIT, REPO_ROOT } from '../../server/cli/common.ts';
import { findTool, HOST_TOOLS } from '../../server/host-tools.ts';

const run = promisify(execFile);
const NETBOOT = join(REPO_ROOT, 'bin/netboot');

async function netboot(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return netbootWithEnv({}, ...args);
}

async function netbootWithEnv(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(NETBOOT, args, { timeout: 20_000, env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const COMMANDS = ['serve', 'check', 'build', 'gc', 'vm', 'demo', 'doctor'];
/** Each command's own options, as --help shows them (registered without loading the command's code). */
const OPTIONS: Record<string, string[]> = {
  serve: [],
  check: ['--runtime-only'],
  build: ['[images...]'],
  gc: ['--keep <n>'],
  vm: ['--mac <mac>', '--firmware <kind>', '--no-ipv6-router', 'Exit codes: 0 expected text seen'],
  demo: ['--mac <mac>', '--timeout <seconds>'],
  doctor: ['-i, --interface <name>', '--json', '--wait <ms>'],
};

describe('netboot CLI', () => {
  it('check prints every config problem with file:line:col and exits with the config code', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'netboot-cli-'));
    const file = join(dir, 'netboot.yaml');
    writeFileSync(
      file,
      `images:
  lab: { source: "docker:lab:1" }
machines:
  52:54:00:aa:bb:01: { image: lab2 }
  52:54:00:AA:BB:01: { image: lab }
  52:54:00:aa:bb:0g: { image: lab }
`,
    );
    const result = await netboot('check', '--config', file);
    expect(result.code).toBe(EXIT.config);
    expect(result.stderr).toContain(`${file}:4:31 machines.52:54:00:aa:bb:01.image: unknown image "lab2" (known: lab)`);
    expect(result.stderr).toContain(`${file}:5:3 machines.52:54:00:AA:BB:01: duplicate MAC 52:54:00:aa:bb:01`);
    expect(result.stderr).toContain(`${file}:6:3 machines.52:54:00:aa:bb:0g: bad MAC`);
  });

  it('check accepts the embedded example config and lists host tools', async () => {
    const result = await netboot('check', '--runtime-only');
    expect(result.stdout).toMatch(/config .*config\/netboot\.yaml: OK/);
    expect(result.stdout).toMatch(/tar2sqfs\s+squashfs-tools-ng/);
    // The runtime tools are installed by scripts/setup-host.sh before the tests run.
    expect(result.code).toBe(EXIT.ok);
  });

  it('lists rdisc6 as optional: absent, it is shown with its package and check still passes', async () => {
    const listed = await netboot('check', '--runtime-only');
    expect(listed.stdout).toMatch(/^ {2}ok {6}rdisc6 +ndisc6 +doctor: .*\(optional\)$/m);

    // A PATH with every runtime tool but rdisc6 (and what bin/netboot itself runs).
    const bin = mkdtempSync(join(tmpdir(), 'netboot-cli-path-'));
    const names = [...HOST_TOOLS.filter((t) => t.need === 'runtime' && !t.optional && !t.name.startsWith('/')).map((t) => t.name), 'node', 'dirname', 'readlink'];
    for (const name of names) symlinkSync((await findTool(name))!, join(bin, name));
    const { stdout, code } = await netbootWithEnv({ PATH: bin }, 'check', '--runtime-only').finally(() => rmSync(bin, { recursive: true, force: true }));
    expect(stdout).toMatch(/^ {2}absent {2}rdisc6 +ndisc6 +doctor: .*\(optional\)$/m);
    expect(stdout).not.toContain('MISSING');
    expect(stdout).toContain('optional tools absent (nothing fails without them); install with:\n  ');
    expect(stdout).toMatch(/apt-get install -y --no-install-recommends ndisc6\n$/);
    expect(code).toBe(EXIT.ok);
  });

  it('answers --help for every command and a usage error for an unknown one', async () => {
    const top = await netboot('--help');
    expect(top.code).toBe(EXIT.ok);
    const listed = [...top.stdout.matchAll(/^  (\w+)(?: \[options\])?(?: \[images\.\.\.\])? {2,}/gm)].map((m) => m[1]!).filter((c) => c !== 'help');
    expect(listed).toEqual(COMMANDS);
    for (const command of COMMANDS) {
      const help = await netboot(command, '--help');
      expect(help.code).toBe(EXIT.ok);
      expect(help.stdout).toContain(`Usage: netboot ${command} [options]`);
      expect(help.stdout).toContain('--config <path>');
      expect(help.stdout).toContain('--log-level <level>');
      // Help wraps at 80 columns: compare with the line breaks undone.
      const text = help.stdout.replace(/\s+/g, ' ');
      expect(text).toContain('(choices: "fatal", "error", "warn", "info", "debug", "trace", "silent", default: "info")');
      for (const option of OPTIONS[command]!) expect(text).toContain(option);
    }
    const bad = await netboot('frobnicate');
    expect(bad.code).toBe(EXIT.usage);
    expect(bad.stderr).toContain("unknown command 'frobnicate'");
  });
});

describe('CLI start-up', () => {
  it("registers commands from modules that load none of the commands' code (bin/netboot --help stays fast)", () => {
    const dir = join(REPO_ROOT, 'server/cli');
    const registration = ['main.ts', 'common.ts', ...COMMANDS.map((c) => `${c}.ts`)];
    for (const file of registration) {
      const source = readFileSync(join(dir, file), 'utf8');
      const imports = [...source.matchAll(/^import (?!type )[^;]*? from '([^']+)';$/gms)].map((m) => m[1]!);
      const heavy = imports.filter((from) => from !== 'commander' && !from.startsWith('node:') && !/^\.\/(check|serve|build|gc|vm|demo|doctor|common)\.ts$/.test(from));
      expect(heavy, file).toEqual([]);
    }
    // Each command's action loads its module when it runs.
    for (const command of COMMANDS) {
      expect(readFileSync(join(dir, `${command}.ts`), 'utf8'), command).toContain(`await import('./actions/${command}.ts')`);
    }
  });
});
