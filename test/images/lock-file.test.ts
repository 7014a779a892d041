import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLockFile, processStartTime } from '../../server/lock-file.ts';

const run = promisify(execFile);

describe('lock files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'netboot-lock-'));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const aged = async (path: string, content: string, secondsOld: number) => {
    await writeFile(path, content);
    const then = new Date(Date.now() - secondsOld * 1000);
    await utimes(path, then, then);
  };

  it('takes over an empty or garbled lock that stayed so, saying why; holds our pid', async () => {
    for (const content of ['', 'garbage\n', '0']) {
      const path = join(dir, `stale-${content.trim() || 'empty'}.lock`);
      await aged(path, content, 30);
      const told: string[] = [];
      const release = await acquireLockFile(path, { timeoutMs: 5_000, onTakeover: (reason) => told.push(reason) });
      expect(await readFile(path, 'utf8')).toBe(`${process.pid} ${processStartTime(process.pid)}\n`);
      expect(told).toHaveLength(1);
      // At least the 30 s it was aged by; a busy machine only adds to it.
      const seconds = Number(/^took over the stale lock .*: it has held no pid for (\d+) s/.exec(told[0]!)?.[1]);
      expect(seconds).toBeGreaterThanOrEqual(29);
      expect(seconds).toBeLessThan(30 + 60);
      await release();
      expect(await readdir(dir)).not.toContain(path.slice(dir.length + 1));
    }
  });

  it('waits for a fresh empty lock (its writer may be between create and write) and for a live holder', async () => {
    const fresh = join(dir, 'fresh.lock');
    await writeFile(fresh, '');
    await expect(acquireLockFile(fresh, { timeoutMs: 300, what: 'the fresh thing' })).rejects.toThrow(/^the fresh thing is held by an unknown process \(empty lock file\)/);
    const live = join(dir, 'live.lock');
    await writeFile(live, `${process.pid}\n`); // pid only (an older netboot), written after we started: ours
    await expect(acquireLockFile(live, { timeoutMs: 300 })).rejects.toThrow(new RegExp(`is held by pid ${process.pid}`));
    const ours = join(dir, 'live-with-start.lock');
    await aged(ours, `${process.pid} ${processStartTime(process.pid)}\n`, 3600);
    await expect(acquireLockFile(ours, { timeoutMs: 300 })).rejects.toThrow(new RegExp(`is held by pid ${process.pid}`));
  });

  it('takes over a pid-only lock written before its pid\'s process started (an older netboot\'s container, pid 1)', async () => {
    const path = join(dir, 'recycled-old-format.lock');
    await aged(path, `${process.pid}\n`, 60);
    // ... but only when the lock is older than the process: this one was written just now.
    const fresh = join(dir, 'fresh-old-format.lock');
    await writeFile(fresh, `${process.pid}\n`);
    await expect(acquireLockFile(fresh, { timeoutMs: 300 })).rejects.toThrow(new RegExp(`is held by pid ${process.pid}`));
    const told: string[] = [];
    const release = await acquireLockFile(path, { timeoutMs: 5_000, onTakeover: (r) => told.push(r) });
    expect(told[0]).toMatch(new RegExp(`its holder, pid ${process.pid}, is gone \\(pid ${process.pid} is now a process started after the lock was written\\)`));
    await release();
  });

  it('takes over a lock whose pid now names another process (a container restarted: its server is pid 1 again)', async () => {
    const started = Number(processStartTime(process.pid));
    expect(started).toBeGreaterThan(0);
    const path = join(dir, 'recycled.lock');
    // Our pid, but a start time before ours: the process that wrote it is gone.
    await writeFile(path, `${process.pid} ${started - 1}\n`);
    const told: string[] = [];
    const release = await acquireLockFile(path, { timeoutMs: 5_000, onTakeover: (r) => told.push(r) });
    expect(told[0]).toMatch(new RegExp(`its holder, pid ${process.pid} started at tick ${started - 1}, is gone \\(pid ${process.pid} is now another process\\)`));
    await release();
  });

  it('takes over a lock whose pid is gone', async () => {
    const child = execFile('true');
    await new Promise((resolve) => child.on('exit', resolve));
    const path = join(dir, 'dead.lock');
    await writeFile(path, `${child.pid}\n`);
    const told: string[] = [];
    const release = await acquireLockFile(path, { timeoutMs: 5_000, onTakeover: (r) => told.push(r) });
    expect(told[0]).toMatch(new RegExp(`its holder, pid ${child.pid}, is gone`));
    await release();
  });

  it.skipIf(process.getuid?.() !== 0)('on a full disk fails with ENOSPC, leaving no empty lock and no open handle', async () => {
    const mnt = join(dir, 'full');
    await mkdir(mnt);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'netboot-lock-test', mnt]);
    try {
      await run('sh', ['-c', `dd if=/dev/zero of=${mnt}/fill bs=4k count=64 2>/dev/null; true`]);
      const fds = async () => (await readdir('/proc/self/fd')).length;
      const before = await fds();
      await expect(acquireLockFile(join(mnt, 'x.lock'))).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(await readdir(mnt)).toEqual(['fill']);
      expect(await fds()).toBe(before);
    } finally {
      await run('umount', ['--lazy', mnt]); // lazy: a leaked handle must not leave the mount behind
    }
  });
});
