import { describe, expect, it } from 'vitest';
import { decideBoot, type ClientFacts } from '../../server/dhcp/boot-decision.ts';
import { clientArch, clientMac, userClass, vendorClass, type DhcpMessage } from '../../server/dhcp/codec.ts';
import { decodeFixture, makeConfig } from './helpers.ts';

const server = { address: '10.9.0.1', httpPort: 8080 };
const known = { '52:54:00:00:d0:01': {}, '52:54:00:00:d0:02': {}, '52:54:00:00:d0:03': {} };

function facts(m: DhcpMessage): ClientFacts {
  return { mac: clientMac(m)!, arch: clientArch(m)[0], userClass: userClass(m), vendorClass: vendorClass(m) };
}

describe('boot decision', () => {
  const config = makeConfig({ server, machines: known });

  it('iPXE (user class) gets the HTTP script whatever its arch', () => {
    expect(decideBoot(facts(decodeFixture('ipxe-bios-discover.bin')), config)).toMatchObject({
      kind: 'boot',
      bootfile: 'http://10.9.0.1:8080/boot.ipxe',
      stage: 'ipxe-script',
      httpClientEcho: false,
    });
  });

  it('UEFI PXE (arch 7) gets snponly.efi over TFTP, or ipxe.efi when configured', () => {
    const f = facts(decodeFixture('ovmf-pxe-discover.bin'));
    expect(decideBoot(f, config)).toMatchObject({ kind: 'boot', bootfile: 'snponly.efi', nextServer: '10.9.0.1', stage: 'ipxe-binary' });
    const ipxeEfi = makeConfig({ server: { ...server, dhcp: { efiBinary: 'ipxe.efi' } }, machines: known });
    expect(decideBoot(f, ipxeEfi)).toMatchObject({ bootfile: 'ipxe.efi' });
    expect(decideBoot({ ...f, arch: 9 }, config)).toMatchObject({ bootfile: 'snponly.efi' });
  });

  it('BIOS PXE (arch 0, or no option 93 at all) gets undionly.kpxe', () => {
    const bios: ClientFacts = { mac: '52:54:00:00:d0:01', arch: 0, userClass: [], vendorClass: 'PXEClient:Arch:00000:UNDI:002001' };
    expect(decideBoot(bios, config)).toMatchObject({ kind: 'boot', bootfile: 'undionly.kpxe' });
    expect(decideBoot({ ...bios, arch: undefined }, config)).toMatchObject({ kind: 'boot', bootfile: 'undionly.kpxe' });
  });

  it('UEFI HTTP Boot (arch 16) gets the efi by URL and the HTTPClient echo', () => {
    expect(decideBoot(facts(decodeFixture('ovmf-http-discover.bin')), config)).toMatchObject({
      kind: 'boot',
      bootfile: 'http://10.9.0.1:8080/ipxe/snponly.efi',
      httpClientEcho: true,
    });
  });

  it('arm64 UEFI PXE (11) gets ipxe-arm64.efi over TFTP; arm64 HTTP Boot (19) gets it by URL with the HTTPClient echo', () => {
    const pxe = decideBoot({ mac: '52:54:00:00:d0:02', arch: 11, userClass: [], vendorClass: 'PXEClient:Arch:00011:UNDI:003000' }, config);
    expect(pxe).toMatchObject({ kind: 'boot', bootfile: 'ipxe-arm64.efi', nextServer: '10.9.0.1', httpClientEcho: false, stage: 'ipxe-binary' });
    const http = decideBoot({ mac: '52:54:00:00:d0:02', arch: 19, userClass: [], vendorClass: 'HTTPClient:Arch:00019:UNDI:003000' }, config);
    expect(http).toMatchObject({ kind: 'boot', bootfile: 'http://10.9.0.1:8080/ipxe/ipxe-arm64.efi', httpClientEcho: true });
    // efiBinary is the x86-64 choice only.
    const ipxeEfi = makeConfig({ server: { ...server, dhcp: { efiBinary: 'ipxe.efi' } }, machines: known });
    expect(decideBoot({ mac: '52:54:00:00:d0:02', arch: 11, userClass: [], vendorClass: 'PXEClient:Arch:00011' }, ipxeEfi)).toMatchObject({ bootfile: 'ipxe-arm64.efi' });
  });

  it('every architecture maps to its binary: 0 BIOS, 6/7/9 x86-64 EFI, 11 arm64, 16/19 by URL; 10 (ARM32) has none', () => {
    const ask = (arch: number | undefined, vendorClass: string) => decideBoot({ mac: '52:54:00:00:d0:01', arch, userClass: [], vendorClass }, config);
    const table = [0, 6, 7, 9, 11, 16, 19].map((arch) => {
      const d = ask(arch, `${arch === 16 || arch === 19 ? 'HTTPClient' : 'PXEClient'}:Arch:000${arch}`);
      return [arch, d.kind === 'boot' ? d.bootfile : d.reason];
    });
    expect(table).toEqual([
      [0, 'undionly.kpxe'],
      [6, 'snponly.efi'],
      [7, 'snponly.efi'],
      [9, 'snponly.efi'],
      [11, 'ipxe-arm64.efi'],
      [16, 'http://10.9.0.1:8080/ipxe/snponly.efi'],
      [19, 'http://10.9.0.1:8080/ipxe/ipxe-arm64.efi'],
    ]);
    expect(ask(10, 'PXEClient:Arch:00010')).toMatchObject({ kind: 'ignore', reason: 'unsupported-arch' });
    // An HTTP Boot client without option 93 is UEFI: the x86-64 binary, never undionly.kpxe.
    expect(ask(undefined, 'HTTPClient')).toMatchObject({ kind: 'boot', bootfile: 'http://10.9.0.1:8080/ipxe/snponly.efi', httpClientEcho: true });
  });

  it('TFTP disabled: arm64 PXE is not answered, arm64 HTTP Boot is', () => {
    const noTftp = makeConfig({ server: { ...server, tftp: { enabled: false } }, machines: known });
    expect(decideBoot({ mac: '52:54:00:00:d0:02', arch: 11, userClass: [], vendorClass: 'PXEClient:Arch:00011' }, noTftp)).toMatchObject({ kind: 'ignore', reason: 'tftp-disabled' });
    expect(decideBoot({ mac: '52:54:00:00:d0:02', arch: 19, userClass: [], vendorClass: 'HTTPClient:Arch:00019' }, noTftp)).toMatchObject({ kind: 'boot' });
  });

  it('TFTP disabled: firmware PXE is not answered, HTTP Boot and iPXE still are', () => {
    const noTftp = makeConfig({ server: { ...server, tftp: { enabled: false } }, machines: known });
    expect(decideBoot(facts(decodeFixture('ovmf-pxe-discover.bin')), noTftp)).toMatchObject({ kind: 'ignore', reason: 'tftp-disabled' });
    expect(decideBoot(facts(decodeFixture('ovmf-http-discover.bin')), noTftp)).toMatchObject({ kind: 'boot' });
    expect(decideBoot(facts(decodeFixture('ipxe-bios-discover.bin')), noTftp)).toMatchObject({ kind: 'boot' });
  });

  it('unknown MACs follow the policy: deny and local are ignored, menu and boot-default boot', () => {
    const f = facts(decodeFixture('ovmf-pxe-discover.bin'));
    const policy = (unknown: string) => makeConfig({ server, machines: {}, defaults: { unknown } });
    expect(decideBoot(f, policy('deny'))).toMatchObject({ kind: 'ignore', reason: 'unknown-mac-deny' });
    expect(decideBoot(f, policy('local'))).toMatchObject({ kind: 'ignore', reason: 'unknown-mac-local' });
    expect(decideBoot(f, policy('menu'))).toMatchObject({ kind: 'boot', bootfile: 'snponly.efi' });
    expect(decideBoot(f, policy('boot-default'))).toMatchObject({ kind: 'boot', machine: { known: false } });
    // A known MAC is answered whatever the policy.
    expect(decideBoot(f, makeConfig({ server, machines: known, defaults: { unknown: 'deny' } }))).toMatchObject({ kind: 'boot', machine: { known: true } });
  });

  it('a client that is neither PXE, HTTP Boot nor iPXE gets no boot file', () => {
    expect(decideBoot({ mac: '52:54:00:00:d0:01', arch: undefined, userClass: [], vendorClass: 'udhcp 1.35.0' }, config)).toMatchObject({
      kind: 'ignore',
      reason: 'not-a-boot-client',
    });
  });
});
