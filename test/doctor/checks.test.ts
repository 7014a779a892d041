import { describe, expect, it } from 'vitest';
import { BOOTREPLY, MessageType, Opt, decodeMessage, encodeMessage, ipOption, textOption, u32Option, u8Option, type DhcpMessage } from '../../server/dhcp/codec.ts';
import { buildDiscover, checkDhcp, discoverDestination, parseOffer, testMac, type Offer } from '../../server/doctor/dhcp.ts';
import { blocksBoot, formatFindings, type Finding } from '../../server/doctor/finding.ts';
import { checkImages } from '../../server/doctor/images.ts';
import { checkRouterAdvert, parseRdisc6 } from '../../server/doctor/ipv6-ra.ts';
import {
  checkAddress,
  checkContainer,
  checkMtu,
  checkPorts,
  checkReceiveBufferCap,
  checkRpFilter,
  detectContainer,
  isNetbootServe,
  parseSs,
  requiredPorts,
  type IpLink,
} from '../../server/doctor/network.ts';

const LINKS: IpLink[] = [
  { ifname: 'lo', flags: ['LOOPBACK', 'UP', 'LOWER_UP'], mtu: 65536, operstate: 'UNKNOWN', addr_info: [{ family: 'inet', local: '127.0.0.1', prefixlen: 8 }] },
  { ifname: 'eno1', flags: ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'], mtu: 1500, operstate: 'UP', addr_info: [{ family: 'inet', local: '192.168.10.5', prefixlen: 24 }] },
  { ifname: 'eno2', flags: ['BROADCAST', 'MULTICAST'], mtu: 1500, operstate: 'DOWN', addr_info: [{ family: 'inet', local: '10.1.0.5', prefixlen: 16 }] },
  { ifname: 'eth0', flags: ['BROADCAST', 'UP', 'LOWER_UP'], mtu: 1500, operstate: 'UP', link_netnsid: 0, linkinfo: { info_kind: 'veth' }, addr_info: [{ family: 'inet', local: '172.17.0.2', prefixlen: 16 }] },
];

describe('doctor: server.address', () => {
  it('names the interface holding it', () => {
    const { finding, link } = checkAddress(LINKS, '192.168.10.5');
    expect(finding).toMatchObject({ severity: 'ok', summary: 'server.address 192.168.10.5 is on eno1 (192.168.10.5/24)' });
    expect(link?.ifname).toBe('eno1');
  });

  it('fails when no interface has it, listing the candidates and the container hint', () => {
    const { finding } = checkAddress(LINKS, '10.9.9.9', { inContainer: true });
    expect(finding.severity).toBe('fail');
    expect(finding.summary).toBe('server.address 10.9.9.9 is on no interface of this host');
    expect(finding.fix).toContain('eno1 192.168.10.5/24');
    expect(finding.fix).not.toContain('127.0.0.1');
    expect(finding.fix).toContain('network_mode: host');
  });

  it('fails for loopback, a down link, and a different --interface', () => {
    expect(checkAddress(LINKS, '127.0.0.1').finding.summary).toContain('loopback');
    expect(checkAddress(LINKS, '10.1.0.5').finding).toMatchObject({ severity: 'fail', fix: 'ip link set eno2 up' });
    const other = checkAddress(LINKS, '192.168.10.5', { interface: 'eth0' });
    expect(other.finding).toMatchObject({ severity: 'fail', summary: 'server.address 192.168.10.5 is on eno1, not on --interface eth0' });
    expect(checkAddress(LINKS, '192.168.10.5', { interface: 'wlan9' }).finding.summary).toBe('no interface wlan9 here');
  });
});

const SS = `udp   UNCONN 0      0            0.0.0.0%br0:67        0.0.0.0:*    users:(("dnsmasq",pid=123,fd=4))
udp   UNCONN 0      0            0.0.0.0:4011      0.0.0.0:*    users:(("node",pid=900,fd=21))
udp   UNCONN 0      0            127.0.0.1:69      0.0.0.0:*
tcp   LISTEN 0      511          *:8080      *:*    users:(("nginx",pid=77,fd=6),("nginx",pid=78,fd=6))
tcp   LISTEN 0      128          [::1]:10809      [::]:*    users:(("nbd-server",pid=55,fd=3))
`;

describe('doctor: ports', () => {
  it('parses ss output, interface-bound and IPv6 addresses included', () => {
    const listeners = parseSs(SS);
    expect(listeners).toHaveLength(5);
    expect(listeners[0]).toEqual({ proto: 'udp', address: '0.0.0.0', port: 67, processes: [{ name: 'dnsmasq', pid: 123 }] });
    expect(listeners[3]!.processes).toHaveLength(2);
    expect(listeners[4]).toMatchObject({ address: '::1', port: 10809 });
  });

  it('recognises a running netboot serve', () => {
    expect(isNetbootServe(['node', '--import', 'file:///opt/netboot/node_modules/tsx/dist/loader.mjs', '/opt/netboot/server/cli/main.ts', 'serve', '--config', 'x'])).toBe(true);
    expect(isNetbootServe(['/usr/local/bin/netboot', 'serve'])).toBe(true);
    expect(isNetbootServe(['/usr/local/bin/netboot', 'doctor'])).toBe(false);
    expect(isNetbootServe(['nginx', 'serve'])).toBe(false);
  });

  it('tells free, ours and taken apart, naming the holder and the setting to move', () => {
    const needs = requiredPorts({ bind: '0.0.0.0', httpPort: 8080, dhcpMode: 'full', tftp: { enabled: true, port: 69 }, nbdPort: 10809 });
    const findings = checkPorts(needs, parseSs(SS), '0.0.0.0', new Set([900]));
    expect(findings[0]).toMatchObject({ severity: 'ok', summary: 'free: 10809/tcp (NBD)' });
    expect(findings[1]).toMatchObject({ severity: 'ok', summary: 'held by a running netboot serve: 4011/udp (PXE)' });
    const taken = findings.filter((f) => f.severity === 'fail');
    expect(taken.map((f) => f.summary)).toEqual([
      '67/udp (DHCP) is taken by dnsmasq pid 123',
      '69/udp (TFTP) is taken by a process doctor cannot see (run as root to name it)',
      '8080/tcp (HTTP) is taken by nginx pid 77, nginx pid 78',
    ]);
    expect(taken[2]!.fix).toBe('stop nginx (pid 77) or its service, or set server.httpPort');
  });

  it('in proxy mode port 67 may be shared: a warning, not a failure; a specific bind address only collides with itself', () => {
    const needs = requiredPorts({ bind: '10.0.0.1', httpPort: 8080, dhcpMode: 'proxy', tftp: { enabled: false, port: 69 }, nbdPort: null });
    const findings = checkPorts(needs, parseSs(SS + 'tcp LISTEN 0 5 10.0.0.2:8081 0.0.0.0:*\n'), '10.0.0.1', new Set());
    expect(findings.find((f) => f.summary.startsWith('67/udp'))).toMatchObject({ severity: 'warn' });
    expect(findings.find((f) => f.summary.startsWith('8080/tcp'))).toMatchObject({ severity: 'fail' });
    const other = checkPorts([{ proto: 'tcp', port: 8081, what: 'HTTP' }], parseSs('tcp LISTEN 0 5 10.0.0.2:8081 0.0.0.0:*\n'), '10.0.0.1', new Set());
    expect(other).toEqual([{ check: 'ports', severity: 'ok', summary: 'free: 8081/tcp (HTTP)' }]);
  });
});

describe('doctor: rp_filter, MTU, container', () => {
  it('warns about strict rp_filter only when the default route leaves elsewhere', () => {
    expect(checkRpFilter({ all: 0, iface: 0 }, 'eno1', 'eno2').severity).toBe('ok');
    expect(checkRpFilter({ all: 2, iface: 1 }, 'eno1', 'eno2').summary).toContain('loose');
    expect(checkRpFilter({ all: 1, iface: 0 }, 'eno1', 'eno1').severity).toBe('ok');
    const strict = checkRpFilter({ all: 0, iface: 1 }, 'eno1', 'eno2');
    expect(strict.severity).toBe('warn');
    expect(strict.fix).toContain('net.ipv4.conf.eno1.rp_filter=2');
  });

  it('warns when net.core.rmem_max holds the DHCP and TFTP receive buffers below 4 MiB, with the sysctl that fixes it', () => {
    expect(checkReceiveBufferCap(4194304)).toMatchObject({ check: 'rmem_max', severity: 'ok' });
    const capped = checkReceiveBufferCap(212992); // a stock kernel's default
    expect(capped.severity).toBe('warn');
    expect(capped.summary).toContain('212992');
    expect(capped.fix).toContain('sysctl -w net.core.rmem_max=4194304');
    expect(capped.fix).toContain('/etc/sysctl.d/');
    expect(checkReceiveBufferCap(null).severity).toBe('info');
  });

  it('warns when a TFTP block does not fit the MTU', () => {
    expect(checkMtu('eno1', 1500, 1468).severity).toBe('ok');
    expect(checkMtu('eno1', 1400, 1468)).toMatchObject({ severity: 'warn', fix: 'set server.tftp.maxBlksize: 1368, or raise the MTU to 1500' });
    expect(checkMtu('eno1', 9000, 1468).severity).toBe('info');
  });

  it('detects a container and a bridge network', () => {
    const none = { dockerenv: false, containerenv: false, containerVar: null, cgroup: '0::/\n' };
    expect(detectContainer(none)).toBeNull();
    expect(detectContainer({ ...none, dockerenv: true })).toBe('/.dockerenv exists');
    expect(detectContainer({ ...none, cgroup: '0::/system.slice/docker-abc.scope\n' })).toBe('/proc/1/cgroup names docker');
    const veth = LINKS[3]!;
    expect(checkContainer(null, veth, 'eth0').severity).toBe('ok');
    const bridged = checkContainer('/.dockerenv exists', veth, 'eth0');
    expect(bridged.severity).toBe('fail');
    expect(bridged.fix).toContain('network_mode: host');
    // A veth without the default route: a lab bridge the machines share (as in the tests' namespaces).
    expect(checkContainer('/.dockerenv exists', veth, null).severity).toBe('ok');
    expect(checkContainer('/.dockerenv exists', LINKS[1]!, 'eno1').severity).toBe('ok');
  });
});

const MAC = '02:6e:62:01:02:03';
const XID = 0x1234abcd;

function offer(fields: Partial<DhcpMessage>, options: DhcpMessage['options']): Buffer {
  const discover = decodeMessage(buildDiscover(MAC, XID));
  if (!discover.ok) throw new Error('discover does not decode');
  return encodeMessage({ ...discover.message, op: BOOTREPLY, ...fields, options: [u8Option(Opt.MESSAGE_TYPE, MessageType.OFFER), ...options] });
}

describe('doctor: DHCP', () => {
  it('sends a PXE-looking DISCOVER from a locally administered MAC, asking for broadcast answers', () => {
    const mac = testMac(Uint8Array.from([1, 2, 3]));
    expect(mac).toBe(MAC);
    expect(parseInt(mac.slice(0, 2), 16) & 0x02).toBe(2);
    const decoded = decodeMessage(buildDiscover(mac, XID));
    expect(decoded.ok).toBe(true);
    if (!decoded.ok) return;
    expect(decoded.message.flags & 0x8000).toBe(0x8000);
    expect(decoded.message.options.find((o) => o.code === Opt.VENDOR_CLASS)?.data.toString()).toMatch(/^PXEClient/);
  });

  it('reads offers meant for us and ignores others', () => {
    const packet = offer({ yiaddr: '10.0.0.50', siaddr: '10.0.0.1', file: 'pxelinux.0' }, [ipOption(Opt.SERVER_ID, '10.0.0.1'), u32Option(Opt.LEASE_TIME, 600), ipOption(Opt.ROUTER, '10.0.0.254')]);
    expect(parseOffer(packet, '10.0.0.1', XID, MAC)).toEqual({
      from: '10.0.0.1',
      server: '10.0.0.1',
      address: '10.0.0.50',
      leaseSeconds: 600,
      router: '10.0.0.254',
      bootfile: 'pxelinux.0',
      nextServer: '10.0.0.1',
      pxe: false,
    });
    expect(parseOffer(packet, '10.0.0.1', XID + 1, MAC)).toBeNull();
    expect(parseOffer(packet, '10.0.0.1', XID, '02:6e:62:00:00:00')).toBeNull();
    expect(parseOffer(Buffer.from('garbage'), '10.0.0.1', XID, MAC)).toBeNull();
    const nul = parseOffer(offer({ yiaddr: '10.0.0.50' }, [ipOption(Opt.SERVER_ID, '10.0.0.1'), textOption(Opt.BOOTFILE, 'pxelinux.0\0')]), '10.0.0.1', XID, MAC);
    expect(nul?.bootfile).toBe('pxelinux.0');
    const proxy = parseOffer(offer({}, [ipOption(Opt.SERVER_ID, '10.0.0.9'), textOption(Opt.VENDOR_CLASS, 'PXEClient')]), '10.0.0.9', XID, MAC);
    expect(proxy).toMatchObject({ address: null, pxe: true });
  });

  it('sends the limited broadcast only when its route is our interface, else the subnet broadcast', () => {
    expect(discoverDestination('eno1', 'eno1', '192.168.10.5', 24)).toBe('255.255.255.255');
    expect(discoverDestination('eno2', 'eno1', '192.168.10.5', 24)).toBe('192.168.10.255');
    expect(discoverDestination(null, 'eno1', '10.1.2.3', 16)).toBe('10.1.255.255');
  });

  const lab: Offer = { from: '10.0.0.1', server: '10.0.0.1', address: '10.0.0.50', nextServer: '10.0.0.1', pxe: false };
  const ours: Offer = { from: '10.0.0.2', server: '10.0.0.2', address: null, bootfile: 'undionly.kpxe', nextServer: '10.0.0.2', pxe: true };
  const probe = (offers: Offer[]) => ({ ok: true as const, offers, waitedMs: 5000, mac: MAC, destination: '10.0.0.255' });

  it('full mode beside another DHCP server fails; alone it fits', () => {
    const [conflict] = checkDhcp(probe([lab]), 'full', '10.0.0.2', 8080);
    expect(conflict).toMatchObject({ severity: 'fail', details: ['10.0.0.1: offers 10.0.0.50, next-server 10.0.0.1'] });
    expect(conflict!.fix).toContain('server.dhcp.mode: proxy');
    expect(checkDhcp(probe([ours]), 'full', '10.0.0.2', 8080).map((f) => f.severity)).toEqual(['ok', 'info']);
  });

  it('proxy mode needs a server giving addresses, and warns about a second PXE server', () => {
    expect(checkDhcp(probe([lab, ours]), 'proxy', '10.0.0.2', 8080).map((f) => f.severity)).toEqual(['ok', 'info']);
    const alone = checkDhcp(probe([]), 'proxy', '10.0.0.2', 8080);
    expect(alone[0]).toMatchObject({ severity: 'fail' });
    expect(alone[0]!.fix).toContain('server.dhcp.mode: full');
    const pxe = checkDhcp(probe([{ ...lab, bootfile: 'pxelinux.0' }]), 'proxy', '10.0.0.2', 8080);
    expect(pxe[1]).toMatchObject({ severity: 'warn', summary: expect.stringContaining('also answers PXE clients') });
  });

  it('DHCP off: fine when the lab server points at us; a failed probe is a warning with its fix', () => {
    expect(checkDhcp(probe([{ ...lab, bootfile: 'http://10.0.0.2:8080/boot.ipxe' }]), 'off', '10.0.0.2', 8080)[0]!.severity).toBe('ok');
    expect(checkDhcp(probe([lab]), 'off', '10.0.0.2', 8080)[0]!.fix).toContain('http://10.0.0.2:8080/boot.ipxe');
    expect(checkDhcp({ ok: false, error: 'bind EACCES 0.0.0.0:68' }, 'proxy', '10.0.0.2', 8080)[0]).toMatchObject({ severity: 'warn', fix: expect.stringContaining('root') });
    expect(checkDhcp({ ok: false, error: 'bind EADDRINUSE 0.0.0.0:68' }, 'proxy', '10.0.0.2', 8080)[0]!.fix).toContain('DHCP client on this host');
  });
});

const RDISC6 = `Soliciting ff02::2 (ff02::2) on eth0...

Hop limit                 :           64 (      0x40)
Router lifetime           :         1800 (0x00000708) seconds
 Prefix                   : fd77:40::/64
  On-link                 :          Yes
 MTU                      :         1500 bytes (valid)
 from fe80::cc33:b1ff:fe5b:ee46
`;

describe('doctor: IPv6 router advertisements', () => {
  it('parses rdisc6', () => {
    expect(parseRdisc6(RDISC6)).toEqual([{ from: 'fe80::cc33:b1ff:fe5b:ee46', lifetimeSeconds: 1800, prefixes: ['fd77:40::/64'] }]);
    expect(parseRdisc6('Soliciting ff02::2 (ff02::2) on eth0...\nTimed out.\n')).toEqual([]);
  });

  it('no RA: a warning naming the 16 s wait and server.ipv6RouterAdvert; handled when that is auto', () => {
    const none = { method: 'rdisc6' as const, advertisements: [] };
    const warn = checkRouterAdvert(none, undefined, 'eth0');
    expect(warn.severity).toBe('warn');
    expect(warn.summary).toContain('~16 s');
    expect(warn.fix).toContain('server.ipv6RouterAdvert: auto');
    expect(checkRouterAdvert(none, 'off', 'eth0').severity).toBe('warn');
    expect(checkRouterAdvert(none, 'auto', 'eth0')).toMatchObject({ severity: 'ok', summary: expect.stringContaining('handled') });
    const dhcpOff = checkRouterAdvert(none, 'auto', 'eth0', 'off');
    expect(dhcpOff.severity).toBe('warn');
    expect(dhcpOff.fix).toContain('only while its DHCP runs');
    expect(checkRouterAdvert({ method: 'rdisc6', advertisements: parseRdisc6(RDISC6) }, undefined, 'eth0').severity).toBe('ok');
    expect(checkRouterAdvert({ method: 'routes', raRoute: false }, undefined, 'eth0').summary).toContain('install ndisc6');
  });
});

describe('doctor: images and the verdict', () => {
  it('built is fine; unbuilt with a readable source warns; unbuilt and unreadable blocks', () => {
    const findings = checkImages(
      [
        { name: 'a', source: 'docker:a', builtId: '0123456789abcdef', sourceState: { state: 'error', detail: 'cannot reach the Docker engine' } },
        { name: 'b', source: 'oci-archive:/b.tar', builtId: null, sourceState: { state: 'ok', detail: 'archive readable (1.0 MB)' } },
        { name: 'c', source: 'oci-archive:/c.tar', builtId: null, sourceState: { state: 'error', detail: '/c.tar: ENOENT' } },
        { name: 'd', source: 'docker:d', builtId: null, sourceState: { state: 'missing', detail: 'not in the engine' } },
      ],
      '/var/cache/netboot',
    );
    expect(findings.map((f) => f.severity)).toEqual(['warn', 'warn', 'fail', 'warn']);
    expect(findings[1]!.fix).toContain('netboot build b');
    expect(checkImages([], '/c')[0]!.severity).toBe('fail');
  });

  it('exit status and text report', () => {
    const findings: Finding[] = [
      { check: 'address', severity: 'ok', summary: 'server.address 10.0.0.2 is on eth0' },
      { check: 'firewall', severity: 'fail', summary: 'drops 69/udp', details: ['by: -A INPUT -p udp --dport 69 -j DROP'], fix: 'accept it' },
    ];
    expect(blocksBoot(findings)).toBe(true);
    expect(blocksBoot(findings.slice(0, 1))).toBe(false);
    const text = formatFindings(findings);
    expect(text).toContain('FAIL  firewall   drops 69/udp\n                 by: -A INPUT');
    expect(text).toContain('                 fix: accept it\n');
    expect(text.trimEnd().split('\n').pop()).toBe('1 problem blocks a boot; 0 warnings.');
  });
});
