import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT, REPO_ROOT } from '../../server/cli/common.ts';
import type { Finding } from '../../server/doctor/finding.ts';
import { startLabDhcp, startRouterAdvertisements, waitForOutput } from '../../server/lab/services.ts';
import { addClientNamespace, createSegment, stopChild, type ClientNamespace, type Segment } from '../lab/netns.ts';

/**
 * `netboot doctor` against staged faults. The doctor's host is a client namespace on a
 * segment's bridge (10.88.4x.2, eth0); the segment itself plays the lab: dnsmasq as the lab's
 * DHCP server and as an IPv6 router advertising. No QEMU.
 */
const NETBOOT = join(REPO_ROOT, 'bin/netboot');
const dir = mkdtempSync(join(tmpdir(), 'doc-doctor-'));

interface Report {
  ok: boolean;
  interface: string | null;
  findings: Finding[];
}

/** A config with one image already in the cache (built), so only the network can fail. */
function writeConfig(name: string, server: Record<string, unknown>): string {
  const cacheDir = join(dir, `${name}-cache`);
  const id = '0123456789abcdef';
  mkdirSync(join(cacheDir, 'images', id), { recursive: true });
  writeFileSync(join(cacheDir, 'images', id, 'manifest.json'), JSON.stringify({ id, builtAt: new Date().toISOString() }));
  writeFileSync(join(cacheDir, 'images', 'lab.current'), JSON.stringify({ id, digest: 'sha256:x', at: new Date().toISOString() }));
  const archive = join(dir, 'lab.tar');
  writeFileSync(archive, 'not read by doctor beyond access()');
  const file = join(dir, `${name}.json`);
  writeFileSync(
    file,
    JSON.stringify({
      server: { stateDir: join(dir, `${name}-state`), cacheDir, ...server },
      images: { lab: { source: `oci-archive:${archive}` } },
      defaults: { image: 'lab' },
    }),
  );
  return file;
}

async function doctor(host: ClientNamespace, config: string, ...args: string[]): Promise<{ code: number; report: Report; stderr: string }> {
  let stdout: string;
  let stderr: string;
  let code = 0;
  try {
    ({ stdout, stderr } = await host.exec(NETBOOT, ['doctor', '--config', config, '--json', ...args], { timeoutMs: 60_000 }));
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    ({ stdout, stderr, code } = e);
  }
  return { code, report: JSON.parse(stdout) as Report, stderr };
}

const of = (report: Report, check: Finding['check']) => report.findings.filter((f) => f.check === check);
const failures = (report: Report) => report.findings.filter((f) => f.severity === 'fail');

describe('netboot doctor on a lab segment (dnsmasq DHCP + router advertisements)', () => {
  let segment: Segment;
  let host: ClientNamespace;

  beforeAll(async () => {
    segment = await createSegment({ serverIp: '10.88.40.1' });
    try {
      await startRouterAdvertisements(segment);
      await startLabDhcp(segment);
      host = await addClientNamespace(segment, { address: '10.88.40.2' });
    } catch (err) {
      await segment.destroy();
      throw err;
    }
  }, 60_000);

  afterAll(async () => {
    await host?.destroy();
    await segment?.destroy();
  });

  it('a clean segment: nothing blocks a boot, exit 0; it names the interface, the lab DHCP server and the router', async () => {
    const config = writeConfig('clean', { address: '10.88.40.2', dhcp: { mode: 'proxy' } });
    // dnsmasq pings an address for 3 s before offering it: a window well past that.
    const { code, report } = await doctor(host, config, '--wait', '8000');
    expect(failures(report)).toEqual([]);
    expect(report.findings.filter((f) => f.severity === 'warn')).toEqual([]);
    expect(code).toBe(EXIT.ok);
    expect(report).toMatchObject({ ok: true, interface: 'eth0' });
    expect(of(report, 'address')[0]!.summary).toBe('server.address 10.88.40.2 is on eth0 (10.88.40.2/24)');
    const dhcp = of(report, 'dhcp')[0]!;
    expect(dhcp.summary).toBe('10.88.40.1 hands out addresses: proxy mode fits (netboot adds the boot information)');
    expect(dhcp.details?.[0]).toMatch(/^10\.88\.40\.1: offers 10\.88\.40\.\d+, lease 3600s, router 10\.88\.40\.1/);
    expect(of(report, 'ipv6-ra')[0]).toMatchObject({ severity: 'ok', details: [expect.stringMatching(/^\S+ \(router lifetime \d+ s, prefix fd77:40::\/64\)$/)] });
    expect(of(report, 'ports')[0]!.summary).toBe('free: 67/udp (DHCP), 4011/udp (PXE), 69/udp (TFTP), 8080/tcp (HTTP)');
    expect(of(report, 'firewall')[0]!.severity).toBe('ok');
    expect(of(report, 'images')[0]!.summary).toContain('image lab');
  }, 60_000);

  it('a second DHCP server beside full mode, UDP 69 dropped, the HTTP port taken: each found with its fix, exit 1', async () => {
    const config = writeConfig('faults', { address: '10.88.40.2', dhcp: { mode: 'full', pool: { start: '10.88.40.50', end: '10.88.40.60' } } });
    await host.exec('iptables', ['-A', 'INPUT', '-p', 'udp', '--dport', '69', '-j', 'DROP']);
    const squatter: ChildProcess = host.spawn('node', ['-e', "require('net').createServer().listen(8080, '0.0.0.0', () => console.log('listening'))"]);
    try {
      await waitForOutput(squatter, /listening/);
      const { code, report } = await doctor(host, config, '--wait', '8000');
      expect(code).toBe(EXIT.failure);
      expect(report.ok).toBe(false);

      const [dhcp] = of(report, 'dhcp');
      expect(dhcp).toMatchObject({ severity: 'fail' });
      expect(dhcp!.summary).toContain('another DHCP server hands out addresses on this segment (10.88.40.1), and server.dhcp.mode is full');
      expect(dhcp!.fix).toContain('server.dhcp.mode: proxy');

      const firewall = of(report, 'firewall');
      expect(firewall).toHaveLength(1);
      expect(firewall[0]).toMatchObject({ severity: 'fail', summary: 'the packet filter drops 69/udp (TFTP) arriving on eth0', details: ['by: -A INPUT -p udp -m udp --dport 69 -j DROP'] });
      expect(firewall[0]!.fix).toContain('iptables -I INPUT -i eth0 -p udp --dport 69 -j ACCEPT');

      const taken = of(report, 'ports').find((f) => f.severity === 'fail');
      expect(taken!.summary).toBe(`8080/tcp (HTTP) is taken by node pid ${await nodePid(host)}`);
      expect(taken!.fix).toContain('or set server.httpPort');
      expect(failures(report).map((f) => f.check).sort()).toEqual(['dhcp', 'firewall', 'ports']);
    } finally {
      await stopChild(squatter);
      await host.exec('iptables', ['-F', 'INPUT']);
    }
  }, 60_000);

  it('ports held by a running netboot serve count as ours, not as taken', async () => {
    const config = writeConfig('ours', { address: '10.88.40.2', dhcp: { mode: 'proxy' } });
    const serve = host.spawn(NETBOOT, ['serve', '--config', config]);
    try {
      await waitForOutput(serve, /netboot serving/, 60_000);
      const { report } = await doctor(host, config, '--wait', '1500');
      const ports = of(report, 'ports');
      expect(ports).toEqual([{ check: 'ports', severity: 'ok', summary: 'held by a running netboot serve: 67/udp (DHCP), 4011/udp (PXE), 69/udp (TFTP), 8080/tcp (HTTP)' }]);
    } finally {
      await stopChild(serve);
    }
  }, 90_000);

  it('server.address on no interface: exit 1, the fix lists the host addresses', async () => {
    const config = writeConfig('noaddr', { address: '10.88.40.99' });
    const { code, report } = await doctor(host, config);
    expect(code).toBe(EXIT.failure);
    const [address] = of(report, 'address');
    expect(address).toMatchObject({ severity: 'fail', summary: 'server.address 10.88.40.99 is on no interface of this host' });
    expect(address!.fix).toContain('eth0 10.88.40.2/24');
    expect(report.interface).toBeNull();
  }, 60_000);
});

/** The pid ss reports for the squatter: `ip netns exec` execs node, so it is the spawned pid. */
async function nodePid(host: ClientNamespace): Promise<number> {
  const { stdout } = await host.exec('ss', ['-H', '-l', '-n', '-p', '-t']);
  return Number(/"node",pid=(\d+)/.exec(stdout)?.[1]);
}

describe('netboot doctor on a segment without router advertisements (and no other DHCP server)', () => {
  let segment: Segment;
  let host: ClientNamespace;

  beforeAll(async () => {
    segment = await createSegment({ serverIp: '10.88.41.1' });
    try {
      host = await addClientNamespace(segment, { address: '10.88.41.2' });
    } catch (err) {
      await segment.destroy();
      throw err;
    }
  }, 60_000);

  afterAll(async () => {
    await host?.destroy();
    await segment?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('no RA: a warning with the 16 s cost and server.ipv6RouterAdvert as the fix; full mode alone fits; not blocking', async () => {
    const config = writeConfig('nora', { address: '10.88.41.2', ipv6RouterAdvert: 'off', dhcp: { mode: 'full', pool: { start: '10.88.41.50', end: '10.88.41.60' } } });
    // Nobody answers here, so a short window proves the absence as well as a long one.
    const { code, report } = await doctor(host, config, '--wait', '1500');
    const [ra] = of(report, 'ipv6-ra');
    expect(ra).toMatchObject({ severity: 'warn', summary: expect.stringContaining('no IPv6 router advertisement on eth0 (no router answered a Router Solicitation)') });
    expect(ra!.summary).toContain('~16 s');
    expect(ra!.fix).toContain('server.ipv6RouterAdvert: auto');
    expect(of(report, 'dhcp')[0]).toMatchObject({ severity: 'ok', summary: expect.stringContaining('no other DHCP server offered an address') });
    expect(code).toBe(EXIT.ok);
  }, 60_000);

  it('no RA but server.ipv6RouterAdvert: auto (the default): reported as handled', async () => {
    const config = writeConfig('auto', { address: '10.88.41.2', dhcp: { mode: 'full', pool: { start: '10.88.41.50', end: '10.88.41.60' } } });
    const { code, report } = await doctor(host, config, '--wait', '1500');
    expect(of(report, 'ipv6-ra')[0]).toMatchObject({ severity: 'ok', summary: expect.stringContaining('handled: server.ipv6RouterAdvert is auto') });
    expect(code).toBe(EXIT.ok);
  }, 60_000);
});
