import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';

const CHILD = join(import.meta.dirname, 'log-child.ts');
const dir = mkdtempSync(join(tmpdir(), 'netboot-log-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
});

function spawnChild(count: number, size: number, ending: 'exit' | 'stay' | 'drain', stdout: 'pipe' | number) {
  const args = [CHILD, String(count), String(size), ending];
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { stdio: ['ignore', stdout, 'pipe'] });
  children.push(child);
  return child;
}

describe('the server log on stdout', () => {
  it('writes every line logged before process.exit', async () => {
    // stdout is a file: writes never wait on a reader, so what reaches it is what the exit flush wrote.
    const out = join(dir, 'exit.log');
    const fd = openSync(out, 'w');
    const child = spawnChild(20_000, 100, 'exit', fd);
    closeSync(fd);
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    const lines = readFileSync(out, 'utf8').split('\n').filter(Boolean);
    expect(code).toBe(0);
    expect(lines).toHaveLength(20_000);
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({ level: 30, i: 19_999, msg: 'line' });
  });

  it('does not stop the server while nobody reads stdout: logging returns with the pipe full', async () => {
    // 8 MiB of lines, far over a pipe's 64 KiB (and under the 16 MiB kept while stdout is blocked).
    // The child ends when its writes are done (no process.exit), once we read again.
    const child = spawnChild(8192, 1000, 'drain', 'pipe');
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stdout!.pause(); // nobody reads: the pipe fills
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      // The child got to the end of its loop with nobody reading: nothing blocked on the full pipe.
      if (stderr.includes('logged')) child.stdout!.resume();
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    const lines = stdout.split('\n').filter(Boolean);
    expect(stderr).toContain('logged');
    expect(code).toBe(0);
    expect(lines).toHaveLength(8192); // and once read, nothing was lost
    expect(lines.map((line) => (JSON.parse(line) as { i: number }).i)).toEqual([...Array(8192).keys()]);
  });

  it('writes a line logged in a quiet moment without waiting for more lines or for the exit', async () => {
    // Lines are batched; a lone line (far under a batch) still goes out within the flush period.
    const child = spawnChild(1, 100, 'stay', 'pipe');
    let stdout = '';
    const line = await new Promise<string>((resolve) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.endsWith('\n')) resolve(stdout);
      });
    });
    expect(JSON.parse(line)).toMatchObject({ level: 30, i: 0, msg: 'line' });
    expect(child.exitCode).toBeNull(); // still running: the periodic flush wrote it, not the exit
  });
});
