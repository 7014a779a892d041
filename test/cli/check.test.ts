import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { EXIT, REPO_ROOT } from '../../server/cli/common.ts';

const run = promisify(execFile);
const NETBOOT = join(REPO_ROOT, 'bin/netboot');

async function netboot(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(NETBOOT, args, { timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

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

  it('answers --help for every command and a usage error for an unknown one', async () => {
    for (const command of ['serve', 'check']) {
      const help = await netboot(command, '--help');
      expect(help.code).toBe(EXIT.ok);
      expect(help.stdout).toContain('--config <path>');
      expect(help.stdout).toContain('--log-level <level>');
    }
    const bad = await netboot('frobnicate');
    expect(bad.code).toBe(EXIT.usage);
    expect(bad.stderr).toContain("unknown command 'frobnicate'");
  });
});
