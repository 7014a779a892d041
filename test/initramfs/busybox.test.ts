import { execFile } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { appletNamesFromBinary, busyboxPath, findBusybox, NETBOOT_SHARE_DIR } from '../../server/initramfs/busybox.ts';

const run = promisify(execFile);

describe('busybox for the image architecture', () => {
  it('picks the host busybox for the host platform, the unpacked one for the other, and refuses unknown platforms', () => {
    expect(busyboxPath('linux/amd64')).toBe('/bin/busybox');
    expect(busyboxPath('linux/arm64', '/share')).toBe('/share/busybox/arm64/busybox');
    expect(busyboxPath('linux/arm64/v8', '/share')).toBe('/share/busybox/arm64/busybox');
    expect(() => busyboxPath('linux/s390x')).toThrow(/platform linux\/s390x is not supported \(netboot boots linux\/amd64, linux\/arm64/);
  });

  it('names the fix when the foreign busybox is missing', async () => {
    await expect(findBusybox('linux/arm64', '/nonexistent-share')).rejects.toThrow(
      /needs a static busybox for arm64 at \/nonexistent-share\/busybox\/arm64\/busybox, which is missing\. Fix: run scripts\/setup-host\.sh/,
    );
    expect(await findBusybox('linux/amd64')).toBe('/bin/busybox');
  });

  it('reads the applet list from the binary exactly as `busybox --list` prints it', async () => {
    const listed = (await run('/bin/busybox', ['--list'])).stdout.trim().split('\n').sort();
    const table = appletNamesFromBinary(await readFile('/bin/busybox'));
    expect(table).toEqual(listed);
    expect(table).toContain('switch_root');
  });

  it('reads the same list from the arm64 busybox setup-host.sh unpacked (no arm64 CPU needed)', async (ctx) => {
    const arm64 = busyboxPath('linux/arm64', NETBOOT_SHARE_DIR);
    if (!(await stat(arm64).then(() => true, () => false))) return ctx.skip();
    const binary = await readFile(arm64);
    expect(binary.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(binary.readUInt16LE(18)).toBe(183); // e_machine EM_AARCH64
    expect(appletNamesFromBinary(binary)).toEqual(appletNamesFromBinary(await readFile('/bin/busybox')));
  });

  it('returns null (the caller runs the binary) when there is no sorted name table', () => {
    expect(appletNamesFromBinary(Buffer.from('no table here'))).toBeNull();
    expect(appletNamesFromBinary(Buffer.from('x\0[\0[[\0zz\0aa\0bb\0cc\0dd\0ee\0ff\0gg\0\0', 'latin1'))).toBeNull();
    expect(appletNamesFromBinary(Buffer.from('x\0[\0[[\0a\0b\0c\0d\0e\0f\0g\0h\0\0', 'latin1'))).toEqual(['[', '[[', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']);
  });
});
