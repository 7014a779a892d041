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

  it('arm64 (11, 19) is not answered, with a reason saying why', () => {
    for (const arch of [11, 19]) {
      const d = decideBoot({ mac: '52:54:00:00:d0:02', arch, userClass: [], vendorClass: `PXEClient:Arch:000${arch}` }, config);
      expect(d).toMatchObject({ kind: 'ignore', reason: 'arm64-no-ipxe' });
      if (d.kind === 'ignore') expect(d.detail).toMatch(/no arm64 iPXE in Debian/);
    }
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
