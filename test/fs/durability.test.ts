import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../server/cli/common.ts';
import { bootableLayer, dockerSaveArchive } from '../fixtures/images/hostile.ts';

const run = promisify(execFile);

/**
 * Issue 14 (m): state must survive a power cut. That cannot be shown by reading files back (the
 * page cache answers), so a child writes every kind of state netboot keeps while strace records
 * its fsync, rename and link calls; each write must follow temp file -> fsync -> rename (or link)
 * -> fsync of the directory. Without the fsyncs these tests fail.
 */

interface Call {
  line: number;
  name: string;
  /** fsync: the fd's path (strace -y); rename/link: [from, to]. */
  paths: string[];
}

function parse(log: string): Call[] {
  const calls: Call[] = [];
  log.split('\n').forEach((text, line) => {
    const m = /^\d+\s+(\w+)\((.*)\)\s+= 0$/.exec(text);
    if (!m) return;
    const [, name, args] = m;
    if (name === 'fsync' || name === 'fdatasync') calls.push({ line, name: 'fsync', paths: [/^\d+<(.*)>$/.exec(args!)?.[1] ?? ''] });
    else calls.push({ line, name: name!.startsWith('rename') ? 'rename' : 'link', paths: [...args!.matchAll(/"([^"]*)"/g)].map((x) => x[1]!) });
  });
  return calls;
}

describe('durable state writes (strace)', () => {
  let work: string;
  let calls: Call[];

  const fsyncOf = (path: string | RegExp) => calls.filter((c) => c.name === 'fsync' && (typeof path === 'string' ? c.paths[0] === path : path.test(c.paths[0]!)));
  /** The one rename/link that put `to` in place; fails the test when there is none. */
  const publish = (name: 'rename' | 'link', to: string) => {
    const found = calls.filter((c) => c.name === name && c.paths[1] === to);
    expect(found, `${name} to ${to}`).toHaveLength(1);
    return found[0]!;
  };
  /** temp -> fsync -> rename/link -> fsync dir, for a file published as `to` in `dir`. */
  const expectDurable = (name: 'rename' | 'link', to: string, dir: string) => {
    const done = publish(name, to);
    const temp = done.paths[0]!;
    expect(temp).not.toBe(to);
    expect(fsyncOf(temp).filter((c) => c.line < done.line), `fsync of ${temp} before the ${name}`).not.toEqual([]);
    expect(fsyncOf(dir).filter((c) => c.line > done.line), `fsync of ${dir} after the ${name}`).not.toEqual([]);
  };

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'netboot-durable-'));
    const archive = join(work, 'image.tar');
    await dockerSaveArchive(archive, [await bootableLayer({ format: 'posix', files: 3 })]);
    const log = join(work, 'strace.log');
    await run(
      'strace',
      ['-f', '--seccomp-bpf', '-qq', '-y', '-e', 'trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat', '-o', log, process.execPath, '--import', 'tsx', join(REPO_ROOT, 'test/fs/durability-child.ts'), work, archive],
      { cwd: REPO_ROOT, timeout: 120_000 },
    ).catch((err: NodeJS.ErrnoException & { stderr?: string }) => {
      if (err.code === 'ENOENT') throw new Error('strace is needed for this test (scripts/setup-host.sh test profile)');
      throw new Error(`the child failed: ${err.stderr ?? err.message}`);
    });
    calls = parse(await readFile(log, 'utf8'));
  }, 180_000);

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('an image build: every artifact is fsynced in the temp dir before the rename to its id, then the images dir', () => {
    const images = join(work, 'cache', 'images');
    const done = calls.find((c) => c.name === 'rename' && /\/\.tmp-[0-9a-f]{16}-/.test(c.paths[0]!) && /\/[0-9a-f]{16}$/.test(c.paths[1]!));
    expect(done, 'the rename of the build dir').toBeDefined();
    const [tmp] = done!.paths;
    for (const artifact of ['rootfs.squashfs', 'vmlinuz', 'manifest.json']) {
      expect(fsyncOf(join(tmp!, artifact)).filter((c) => c.line < done!.line), `fsync of ${artifact}`).not.toEqual([]);
    }
    expect(fsyncOf(tmp!).filter((c) => c.line < done!.line), 'fsync of the build dir').not.toEqual([]);
    expect(fsyncOf(images).filter((c) => c.line > done!.line), 'fsync of the images dir').not.toEqual([]);
  });

  it('the current-id pointer, the lease file: temp, fsync, rename, fsync dir', () => {
    expectDurable('rename', join(work, 'cache', 'images', 'durable.current'), join(work, 'cache', 'images'));
    expectDurable('rename', join(work, 'state', 'leases.json'), join(work, 'state'));
  });

  it('the used-URL ledger: rewritten durably at start-up (expired lines dropped), then each appended line fsynced', () => {
    const ledger = join(work, 'state', 'used-layer-urls.jsonl');
    expectDurable('rename', ledger, join(work, 'state'));
    const compacted = publish('rename', ledger);
    expect(fsyncOf(ledger).filter((c) => c.line > compacted.line), 'fsync of the appended line').not.toEqual([]);
  });

  it('the install key (created once: link, never replaced) and SSH host keys (fsynced before their dir is renamed in)', () => {
    expectDurable('link', join(work, 'keys', 'netboot.key'), join(work, 'keys'));
    const machine = join(work, 'keys', 'machines', '52-54-00-14-00-01');
    const done = publish('rename', join(machine, 'ssh'));
    for (const file of ['ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub', 'ssh_host_ecdsa_key', 'ssh_host_ecdsa_key.pub']) {
      expect(fsyncOf(join(done.paths[0]!, file)).filter((c) => c.line < done.line), `fsync of ${file}`).not.toEqual([]);
    }
    expect(fsyncOf(machine).filter((c) => c.line > done.line)).not.toEqual([]);
  });
});
