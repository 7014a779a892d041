/**
 * Independent clients against our server on loopback: libnbd's nbdinfo/nbdcopy, qemu-img,
 * and Debian's nbd-client (its handshake; the kernel half needs the nbd module).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NbdConnectionEvent } from '../../server/nbd/server.ts';
import { startServer, type ServerFixture } from './helpers.ts';

const run = promisify(execFile);
const SIZE = 8 * 1024 * 1024 + 4096; // qemu's client mishandles exports not a multiple of 512 (nbd-server too)
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let fx: ServerFixture;
const events: NbdConnectionEvent[] = [];
let uri: (name: string) => string;

beforeAll(async () => {
  fx = await startServer({ img: SIZE, 'second-image': 65536 }, { onConnection: (e) => events.push(e) });
  uri = (name) => `nbd://127.0.0.1:${fx.port}/${name}`;
});
afterAll(async () => {
  await fx?.close();
});

describe('nbd interop', () => {
  it('nbdinfo (NBD_OPT_GO) shows the size, read-only and multi-conn', async () => {
    const { stdout } = await run('nbdinfo', ['--json', uri('img')], { timeout: 20_000 });
    const info = JSON.parse(stdout) as { protocol: string; exports: Record<string, unknown>[] };
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.exports[0]).toMatchObject({
      'export-name': 'img',
      'export-size': SIZE,
      is_read_only: true,
      can_multi_conn: true,
      can_trim: false,
      can_zero: false,
      block_size_maximum: 32 * 1024 * 1024,
    });
  });

  it('nbdinfo --list (NBD_OPT_LIST, then NBD_OPT_INFO per export)', async () => {
    const { stdout } = await run('nbdinfo', ['--list', '--json', uri('')], { timeout: 20_000 });
    const info = JSON.parse(stdout) as { exports: { 'export-name': string; 'export-size': number }[] };
    expect(info.exports.map((e) => [e['export-name'], e['export-size']])).toEqual([
      ['img', SIZE],
      ['second-image', 65536],
    ]);
  });

  it('nbdinfo on an unknown export fails cleanly with the server still up', async () => {
    await expect(run('nbdinfo', [uri('no-such-image')], { timeout: 20_000 })).rejects.toThrow(/unknown export|No such file/i);
    await run('nbdinfo', ['--size', uri('img')], { timeout: 20_000 });
  });

  it('nbdcopy reads the export byte-identical to the file', async () => {
    const out = join(fx.dir, 'copy.img');
    await run('nbdcopy', [uri('img'), out], { timeout: 60_000 });
    expect(sha256(await readFile(out))).toBe(sha256(fx.files.get('img')!));
  });

  it('qemu-img convert reads the export byte-identical to the file', async () => {
    const out = join(fx.dir, 'qemu.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('img'), out], { timeout: 60_000 });
    expect(sha256(await readFile(out))).toBe(sha256(fx.files.get('img')!));
  });

  it('several nbdcopy at once (each with several connections) all get the right bytes', async () => {
    const outs = [0, 1, 2, 3].map((i) => join(fx.dir, `par${i}.img`));
    await Promise.all(outs.map((out) => run('nbdcopy', ['--connections=2', '--requests=16', uri('img'), out], { timeout: 60_000 })));
    const want = sha256(fx.files.get('img')!);
    for (const out of outs) expect(sha256(await readFile(out))).toBe(want);
  });

  it('writing to the export is refused and the file is unchanged', async () => {
    const src = join(fx.dir, 'zeros');
    await run('truncate', ['-s', String(SIZE), src]);
    await expect(run('nbdcopy', [src, uri('img')], { timeout: 20_000 })).rejects.toThrow(/read-only/);
    await expect(run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', uri('img')], { timeout: 20_000 })).rejects.toThrow(/Permission denied|read-only/i);
    expect(sha256(await readFile(fx.path('img')))).toBe(sha256(fx.files.get('img')!));
  });

  it("Debian's nbd-client lists exports (NBD_OPT_LIST)", async () => {
    const { stdout } = await run('nbd-client', ['-l', '127.0.0.1', String(fx.port)], { timeout: 20_000 });
    expect(stdout.split('\n')).toEqual(expect.arrayContaining(['img', 'second-image']));
  });

  it("Debian's nbd-client negotiates an export with NBD_OPT_GO (the kernel step needs the nbd module)", async () => {
    if (existsSync('/dev/nbd0') || existsSync('/sys/module/nbd')) return; // would attach a real device; not on this host
    const before = events.length;
    const result = await run('nbd-client', ['-N', 'second-image', '127.0.0.1', String(fx.port), '/dev/nbd0', '-readonly'], { timeout: 20_000 }).then(
      () => ({ ok: true, stderr: '' }),
      (err: { stderr: string; stdout: string }) => ({ ok: false, stderr: err.stderr, stdout: err.stdout }),
    );
    expect(result.ok).toBe(false);
    expect(result.stderr).toMatch(/netlink|nbd module/);
    expect(events.slice(before)).toEqual(expect.arrayContaining([expect.objectContaining({ event: 'open', export: 'second-image' })]));
  });
});
