import { describe, expect, it } from 'vitest';
import { ipxeArchCheck } from '../../server/boot/ipxe-arch.ts';
import { parseConfig } from '../../server/config/load.ts';
import { loadIpxeTemplates, renderBoot } from '../../server/http/ipxe.ts';

const config = parseConfig(
  `
images:
  pi: { source: "oci-archive:/x.tar", platform: linux/arm64 }
  pc: { source: "docker:pc:1" }
machines:
  52:54:00:a4:00:01: { image: pi, hostname: rack1 }
  52:54:00:a4:00:02: { image: pc, hostname: desk1 }
`,
  '/virtual/netboot.yaml',
);

function script(mac: string): string {
  const machine = config.machines.get(mac)!;
  return renderBoot(loadIpxeTemplates(), {
    server: 'http://10.88.76.1:8080',
    machine,
    image: config.images.get(machine.image)!,
    imageId: '0123456789abcdef',
    layerUrl: 'http://10.88.76.1:8080/layer',
    eventToken: 't',
    rebootDelay: 0,
    nbd: '10.88.76.1:10809',
  });
}

describe('a machine whose iPXE architecture does not match its image', () => {
  it('checks ${buildarch} against the image platform before any kernel download', () => {
    const arm = script('52:54:00:a4:00:01');
    const check = 'iseq ${buildarch} arm64 || goto wrong_arch';
    expect(arm).toContain(`\n${check}\n`);
    expect(arm.indexOf(check)).toBeLessThan(arm.indexOf('\nkernel '));
    // amd64 images: the x86-64 EFI iPXE and the 32-bit BIOS one (undionly.kpxe boots 64-bit kernels).
    expect(script('52:54:00:a4:00:02')).toContain('\niseq ${buildarch} x86_64 || iseq ${buildarch} i386 || goto wrong_arch\n');
  });

  it('prints a clear message naming the machine, its firmware architecture and the image platform, then leaves without booting', () => {
    const arm = script('52:54:00:a4:00:01');
    const block = arm.slice(arm.indexOf('\n:wrong_arch\n'), arm.indexOf('\n:kernel\n'));
    expect(block).toContain('echo netboot: WRONG ARCHITECTURE: rack1 (52:54:00:a4:00:01) is a ${buildarch} machine, image pi is linux/arm64\n');
    expect(block).toContain('give this machine an image built for its architecture');
    expect(block).not.toMatch(/\n(kernel|initrd|boot|chain)\b/);
    expect(block).toMatch(/\nsleep 5\nexit\n*$/);
    // The normal path jumps over it.
    expect(arm.slice(0, arm.indexOf('\n:wrong_arch\n'))).toMatch(/goto wrong_arch\ngoto kernel\n*$/);
  });

  it('skips the check (a comment) for a platform iPXE has no build for', () => {
    expect(ipxeArchCheck('linux/s390x')).toBe('# no architecture check: iPXE has no build for linux/s390x');
    expect(ipxeArchCheck('linux/arm64/v8')).toBe('iseq ${buildarch} arm64 || goto wrong_arch');
  });
});
