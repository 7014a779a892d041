import { describe, expect, it } from 'vitest';
import { ConsoleText, withoutKernelRecords } from '../../server/lab/console-text.ts';

const MARKER = /NETBOOT-E2E-UP hostname=(\S*) image=(\S*) root=(\S*) extra=(\S*) addr=(\S*)\r?\n/;

// As a fresh CI machine printed it: a kernel record landed between the marker and its newline.
const captured = [
  '[  OK  ] Reached target getty.target - Login Prompts.\r\n',
  '[   45.972137] sr 1:0:0:0: [sr0] scsi3-mmc drive: 4x/4x cd/rw xa/form2 tray\r\n',
  'NETBOOT-E2E-UP hostname=beta image=3025a26f14087f20 root=overlay extra= addr=10.77.201.166',
  '[   46.051396] cdrom: Uniform CD-ROM driver Revision: 3.20\r\n',
  '\r\n',
  '[   46.071345] fbcon: bochs-drmdrmfb (fb0) is primary device\r\n',
].join('');

describe('console text with kernel records interleaved', () => {
  it('finds a marker line that a kernel record split, with every field intact', () => {
    expect(MARKER.exec(captured)).toBeNull();
    const match = new ConsoleText();
    match.append(captured);
    expect(match.find(MARKER)?.slice(1)).toEqual(['beta', '3025a26f14087f20', 'overlay', '', '10.77.201.166']);
  });

  it('gives the same answer however the output is chunked, including mid-record and mid-marker', () => {
    for (let size = 1; size <= 37; size++) {
      const text = new ConsoleText();
      for (let at = 0; at < captured.length; at += size) text.append(captured.slice(at, at + size));
      expect(text.raw).toBe(captured);
      expect(text.userspace).toBe(withoutKernelRecords(captured));
      expect(text.find(MARKER)?.[5]).toBe('10.77.201.166');
    }
  });

  it('a record inside a field is lifted out too; an unfinished record is left alone until its newline', () => {
    const text = new ConsoleText();
    text.append('NETBOOT-E2E-UP hostname=al[    7.000001] random: crng init done\r\npha image=x root=overlay extra= addr=');
    expect(text.find(MARKER)).toBeNull();
    text.append('10.0.0.2[    7.5');
    expect(text.find(MARKER)).toBeNull();
    text.append('00000] late record\n\n');
    expect(text.find(MARKER)?.slice(1)).toEqual(['alpha', 'x', 'overlay', '', '10.0.0.2']);
  });

  it('still matches kernel text itself, and leaves userspace brackets such as [  OK  ] alone', () => {
    const text = new ConsoleText();
    text.append('[  OK  ] Started netboot-up.service\r\n[    9.100000] Kernel panic - not syncing: VFS\r\n');
    expect(text.find(/Kernel panic - not syncing/)).not.toBeNull();
    expect(text.userspace).toBe('[  OK  ] Started netboot-up.service\r\n');
  });

  it('a global pattern does not carry lastIndex from one search to the next', () => {
    const text = new ConsoleText();
    text.append('login: \n');
    const global = /login:/g;
    expect(text.find(global)).not.toBeNull();
    expect(text.find(global)).not.toBeNull();
  });
});
