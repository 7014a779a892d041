import { execFileSync } from 'node:child_process';
import { lstatSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeTar, type TarEntry } from '../../server/layers/tar.ts';
import { tempDir } from '../http/fixtures.ts';

const tmp = tempDir('netboot-tar-');
afterAll(() => tmp.cleanup());

const longDir = `deep/${'d'.repeat(90)}/${'e'.repeat(40)}`;
const entries: TarEntry[] = [
  { type: 'dir', path: 'etc', mode: 0o755, uid: 0, gid: 0 },
  { type: 'file', path: 'etc/secret', mode: 0o640, uid: 0, gid: 42, content: Buffer.from('s3cret\n') },
  { type: 'symlink', path: 'etc/localtime', uid: 0, gid: 0, target: '../usr/share/zoneinfo/UTC' },
  { type: 'dir', path: 'home', mode: 0o755, uid: 0, gid: 0 },
  { type: 'dir', path: 'home/alice', mode: 0o700, uid: 1001, gid: 1001 },
  { type: 'file', path: 'home/alice/big', mode: 0o600, uid: 1001, gid: 1001, content: Buffer.alloc(1000, 7) },
  { type: 'dir', path: 'deep', mode: 0o755, uid: 0, gid: 0 },
  { type: 'dir', path: `deep/${'d'.repeat(90)}`, mode: 0o755, uid: 0, gid: 0 },
  { type: 'dir', path: longDir, mode: 0o755, uid: 0, gid: 0 },
  { type: 'file', path: `${longDir}/long-name-file`, mode: 0o755, uid: 5, gid: 6, content: Buffer.from('#!/bin/sh\n') },
];

function check(root: string) {
  const secret = lstatSync(join(root, 'etc/secret'));
  expect([secret.mode & 0o7777, secret.uid, secret.gid]).toEqual([0o640, 0, 42]);
  expect(readFileSync(join(root, 'etc/secret'), 'utf8')).toBe('s3cret\n');
  expect(readlinkSync(join(root, 'etc/localtime'))).toBe('../usr/share/zoneinfo/UTC');
  const home = lstatSync(join(root, 'home/alice'));
  expect([home.mode & 0o7777, home.uid, home.gid]).toEqual([0o700, 1001, 1001]);
  expect(readFileSync(join(root, 'home/alice/big')).equals(Buffer.alloc(1000, 7))).toBe(true);
  const long = lstatSync(join(root, longDir, 'long-name-file'));
  expect([long.mode & 0o7777, long.uid, long.gid]).toEqual([0o755, 5, 6]);
}

describe('writeTar', () => {
  const tar = writeTar(entries);
  const file = join(tmp.path, 'layer.tar');
  writeFileSync(file, tar);

  it('is block-aligned and reproducible', () => {
    expect(tar.length % 512).toBe(0);
    expect(writeTar(entries).equals(tar)).toBe(true);
  });

  it('GNU tar --numeric-owner unpacks owners, modes, symlinks and pax long names', () => {
    const out = join(tmp.path, 'gnu');
    execFileSync('mkdir', ['-p', out]);
    execFileSync('tar', ['-x', '--numeric-owner', '-p', '-f', file, '-C', out]);
    check(out);
  });

  it('busybox tar (what /init runs) unpacks the same', () => {
    const out = join(tmp.path, 'busybox');
    execFileSync('mkdir', ['-p', out]);
    execFileSync('busybox', ['tar', '-x', '-f', file, '-C', out]);
    check(out);
  });
});
