import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createSegment, stopChild, type Segment } from '../lab/netns.ts';
import { startLabDhcp, startRouterAdvertisements, waitForOutput } from '../../server/lab/services.ts';
import { Vm } from '../../server/lab/vm.ts';
import { silentLogger } from '../../server/log.ts';
import { linkLocalFromMac } from '../../server/ipv6/ndp.ts';
import { RouterAdvertResponder, type SolicitationEvent } from '../../server/ipv6/responder.ts';
import type { DhcpExchange } from '../../server/dhcp/server.ts';
import { DhcpChild, UdpPeer } from './lab.ts';

const MACS = { pxe: '52:54:00:00:f0:01', http: '52:54:00:00:f0:02', ipxe: '52:54:00:00:f0:03' };

/**
 * Real firmware beside a lab DHCP server (dnsmasq hands out addresses) with our proxy on the
 * same segment: each client must take its address from dnsmasq and its boot file from us,
 * and then ask for that file. No TFTP/HTTP server is needed: the first request for the file
 * is the proof. QEMU runs under TCG; each VM is stopped as soon as its request is seen.
 * Like most IPv4-only networks, this segment has no IPv6 router: netboot's answers to router
 * solicitations (server/ipv6/, wired as in server/app/netboot.ts: a DHCP answer with a boot
 * file opens the machine's window) are what keeps iPXE from waiting for one.
 */
describe('real PXE firmware with a lab DHCP server and our proxy', () => {
  let segment: Segment;
  let dir: string;
  let server: DhcpChild;
  let responder: RouterAdvertResponder;
  const solicitations: SolicitationEvent[] = [];
  let vm: Vm | null = null;
  const extra: ChildProcess[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-firmware-'));
    segment = await createSegment();
    await startLabDhcp(segment);
    const { stdout } = await segment.exec('ip', ['-j', 'link', 'show', 'br0']);
    const bridgeMac = (JSON.parse(stdout) as { address: string }[])[0]!.address;
    responder = await RouterAdvertResponder.start({
      iface: { name: 'br0', mac: bridgeMac, linkLocal: linkLocalFromMac(bridgeMac) },
      log: silentLogger,
      spawn: (cmd, args) => segment.spawn(cmd, args),
      onSolicitation: (event) => solicitations.push(event),
    });
    server = await DhcpChild.start(segment, {
      server: { address: segment.serverIp, httpPort: 8080, stateDir: join(dir, 'state') },
      images: { deb: { source: 'docker:debian:12' } },
      machines: Object.fromEntries(Object.values(MACS).map((mac) => [mac, {}])),
    });
    createInterface({ input: server.child.stdout! }).on('line', (line) => {
      if (!line.startsWith('exchange ')) return;
      const exchange = JSON.parse(line.slice('exchange '.length)) as DhcpExchange;
      if (exchange.replyType && exchange.offered.bootfile) responder.bootStarted(exchange.mac);
    });
  });

  afterEach(async () => {
    await vm?.stop();
    vm = null;
    for (const child of extra.splice(0)) await stopChild(child, 1000);
  });

  afterAll(async () => {
    await responder?.stop();
    await server?.stop();
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  const inLabRange = (ip: string) => {
    const last = Number(ip.split('.')[3]);
    return ip.startsWith(`${segment.subnet}.`) && last >= 100 && last <= 199;
  };

  it('OVMF UEFI PXE (arch 7) takes the lab address and fetches snponly.efi from us over TFTP', async () => {
    const tftp = await UdpPeer.start(segment, 69);
    extra.push(tftp.child);
    vm = new Vm(segment, { name: 'ovmf-pxe', mac: MACS.pxe, firmware: 'uefi-pxe', memoryMiB: 256, logDir: dir });
    await vm.start();
    const rrq = await tftp.next((r) => r.bytes.readUInt16BE(0) === 1, 120_000);
    expect(rrq, `no TFTP request; console:\n${vm.tail()}`).not.toBeNull();
    expect(rrq!.bytes.subarray(2, rrq!.bytes.indexOf(0, 2)).toString()).toBe('snponly.efi');
    expect(inLabRange(rrq!.from)).toBe(true);
    expect(server.exchanges).toContainEqual(expect.objectContaining({ mac: MACS.pxe, arch: 7, replyType: 'OFFER', offered: { bootfile: 'snponly.efi' } }));
  }, 180_000);

  it('OVMF UEFI HTTP Boot (arch 16) takes the lab address and GETs the efi URL we echoed HTTPClient with', async () => {
    const http = segment.spawn('busybox', ['nc', '-l', '-p', '8080']);
    extra.push(http);
    vm = new Vm(segment, { name: 'ovmf-http', mac: MACS.http, firmware: 'uefi-http', memoryMiB: 256, logDir: dir });
    await vm.start();
    const requestLine = await waitForOutput(http, /(GET|HEAD) \/ipxe\/\S+ HTTP/, 120_000);
    expect(requestLine).toMatch(/ \/ipxe\/snponly\.efi /);
    expect(server.exchanges).toContainEqual(
      expect.objectContaining({ mac: MACS.http, arch: 16, replyType: 'OFFER', offered: { bootfile: `http://${segment.serverIp}:8080/ipxe/snponly.efi` } }),
    );
  }, 180_000);

  it('the iPXE ROM (BIOS) takes the lab address and our boot.ipxe URL; with no IPv6 router, our RA ends its IPv6 wait', async () => {
    vm = new Vm(segment, { name: 'ipxe-bios', mac: MACS.ipxe, firmware: 'bios', memoryMiB: 256, logDir: dir });
    await vm.start();
    const [, ip] = await vm.waitFor(/net0: (\d+\.\d+\.\d+\.\d+)\//, 90_000);
    expect(inLabRange(ip!)).toBe(true);
    await vm.waitFor(new RegExp(`http://${segment.serverIp.replace(/\./g, '\\.')}:8080/boot\\.ipxe`), 60_000);
    expect(server.exchanges).toContainEqual(expect.objectContaining({ mac: MACS.ipxe, arch: 0, offered: { bootfile: `http://${segment.serverIp}:8080/boot.ipxe` } }));
    // iPXE solicited, we answered, and iPXE took the answer: without one it re-sends its
    // solicitation on a backoff (1/8 s doubling, src/net/ndp.c) until it gives up, 6 in all
    // here; an accepted answer stops that. iPXE handles one received frame per main-loop step,
    // so one or two retransmits may already be due when ours is still queued behind the DHCP
    // offers (seen: 1 with this ROM, 2 with Debian 13's).
    const fromVm = solicitations.filter((e) => e.mac === MACS.ipxe);
    const firstAnswer = fromVm.findIndex((e) => e.verdict.answer);
    expect(firstAnswer, JSON.stringify(fromVm)).toBeGreaterThanOrEqual(0);
    expect(fromVm[firstAnswer]!.source).toMatch(/^fe80::5054:ff:fe00:f003$/);
    expect(fromVm.length - firstAnswer - 1, JSON.stringify(fromVm)).toBeLessThanOrEqual(2);
  }, 180_000);
});

/** We are the only DHCP server: firmware must accept our full-mode offers (address + boot file). */
describe('real PXE firmware with our server in full mode', () => {
  let segment: Segment;
  let dir: string;
  let server: DhcpChild;
  let vm: Vm | null = null;
  const extra: ChildProcess[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dhcp-firmware-full-'));
    segment = await createSegment();
    await startRouterAdvertisements(segment);
    const s = segment.subnet;
    server = await DhcpChild.start(segment, {
      server: { address: segment.serverIp, httpPort: 8080, stateDir: join(dir, 'state'), dhcp: { mode: 'full', pool: { start: `${s}.50`, end: `${s}.60`, router: segment.serverIp } } },
      images: { deb: { source: 'docker:debian:12' } },
      machines: { [MACS.pxe]: { ip: `${s}.21` }, [MACS.ipxe]: { ip: `${s}.23` } },
    });
  });

  afterEach(async () => {
    await vm?.stop();
    vm = null;
    for (const child of extra.splice(0)) await stopChild(child, 1000);
  });

  afterAll(async () => {
    await server?.stop();
    await segment?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('OVMF UEFI PXE gets its reserved address and fetches snponly.efi', async () => {
    const tftp = await UdpPeer.start(segment, 69);
    extra.push(tftp.child);
    vm = new Vm(segment, { name: 'ovmf-pxe-full', mac: MACS.pxe, firmware: 'uefi-pxe', memoryMiB: 256, logDir: dir });
    await vm.start();
    const rrq = await tftp.next((r) => r.bytes.readUInt16BE(0) === 1, 120_000);
    expect(rrq, `no TFTP request; console:\n${vm.tail()}`).not.toBeNull();
    expect(rrq!.bytes.subarray(2, rrq!.bytes.indexOf(0, 2)).toString()).toBe('snponly.efi');
    expect(rrq!.from).toBe(`${segment.subnet}.21`);
    expect(server.exchanges).toContainEqual(expect.objectContaining({ mac: MACS.pxe, replyType: 'ACK', offered: { ip: `${segment.subnet}.21`, bootfile: 'snponly.efi' } }));
  }, 180_000);

  it('the iPXE ROM gets its reserved address and the script URL', async () => {
    vm = new Vm(segment, { name: 'ipxe-bios-full', mac: MACS.ipxe, firmware: 'bios', memoryMiB: 256, logDir: dir });
    await vm.start();
    const [, ip] = await vm.waitFor(/net0: (\d+\.\d+\.\d+\.\d+)\//, 90_000);
    expect(ip).toBe(`${segment.subnet}.23`);
    await vm.waitFor(new RegExp(`http://${segment.serverIp.replace(/\./g, '\\.')}:8080/boot\\.ipxe`), 60_000);
    expect(server.exchanges).toContainEqual(expect.objectContaining({ mac: MACS.ipxe, replyType: 'ACK', offered: { ip: `${segment.subnet}.23`, bootfile: `http://${segment.serverIp}:8080/boot.ipxe` } }));
  }, 180_000);
});
