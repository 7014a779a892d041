import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addClientNamespace, createSegment, type ClientNamespace, type Segment } from '../lab/netns.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { silentLogger } from '../../server/log.ts';
import { buildRouterAdvertisement, checksum, ipv6Bytes, linkLocalFromMac } from '../../server/ipv6/ndp.ts';
import { RouterAdvertResponder, RA_IO_HELPER, type SolicitationEvent } from '../../server/ipv6/responder.ts';
import { SolicitationPolicy } from '../../server/ipv6/solicitation-policy.ts';

const BOOTING = '52:54:00:88:50:01';
const STRANGER = '52:54:00:88:50:02';
const ROUTER = '52:54:00:88:50:03';

/**
 * The responder and its packet-socket helper on a segment's bridge, against real peers:
 * rdisc6 (ndisc6) solicits from client namespaces the way any host does, and prints the RA it
 * got. No IPv6 router runs on the segment except where a test starts one.
 */
describe('router solicitation responder (real frames, real peers)', () => {
  let segment: Segment;
  let booting: ClientNamespace;
  let stranger: ClientNamespace;
  let responder: RouterAdvertResponder;
  const events: SolicitationEvent[] = [];

  beforeAll(async () => {
    segment = await createSegment({ serverIp: '10.88.50.1' });
    booting = await addClientNamespace(segment, { mac: BOOTING });
    stranger = await addClientNamespace(segment, { mac: STRANGER });
    const { stdout } = await segment.exec('ip', ['-j', 'link', 'show', 'br0']);
    const mac = (JSON.parse(stdout) as { address: string }[])[0]!.address;
    responder = await RouterAdvertResponder.start({
      iface: { name: 'br0', mac, linkLocal: linkLocalFromMac(mac) },
      log: silentLogger,
      policy: new SolicitationPolicy({ windowMs: 600_000, maxAnswersPerWindow: 100, maxMachines: 16, routerMemoryMs: 600_000 }),
      spawn: (cmd, args) => segment.spawn(cmd, args),
      onSolicitation: (event) => events.push(event),
    });
    responder.bootStarted(BOOTING);
    for (const client of [booting, stranger]) await linkLocalReady(client);
  }, 60_000);

  afterAll(async () => {
    await responder?.stop();
    await booting?.destroy();
    await stranger?.destroy();
    await segment?.destroy();
  });

  it('answers a booting machine with a unicast RA that gives it no router, no prefix and no DHCPv6', async () => {
    const { stdout } = await booting.exec('rdisc6', ['-1', '-n', '-r', '5', '-w', '2000', 'eth0']);
    expect(stdout).toMatch(/Stateful address conf\.\s*:\s*No/);
    expect(stdout).toMatch(/Stateful other conf\.\s*:\s*No/);
    expect(stdout).toMatch(/Router lifetime\s*:\s*0 \(0x00000000\) seconds/);
    expect(stdout).not.toMatch(/Prefix/);
    expect(stdout).toMatch(/from fe80::/);
    expect(events).toContainEqual(expect.objectContaining({ mac: BOOTING, verdict: { answer: true } }));
    // The host kept no route from it.
    const routes = await booting.exec('ip', ['-6', 'route', 'show', 'default']);
    expect(routes.stdout.trim()).toBe('');
  }, 30_000);

  it('does not answer a machine it is not booting (rdisc6 hears nothing)', async () => {
    const outcome = await stranger.exec('rdisc6', ['-1', '-n', '-r', '2', '-w', '500', 'eth0']).then(
      (r) => ({ code: 0, out: r.stdout }),
      (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, out: `${err.stdout}${err.stderr}` }),
    );
    expect(outcome.code).not.toBe(0);
    expect(outcome.out).toMatch(/No response/);
    // rdisc6 may give up before the responder has handled its solicitations: wait for the verdict.
    await waitUntil(() => events.some((e) => e.mac === STRANGER), 'a verdict on the stranger', 30_000);
    expect(events).toContainEqual(expect.objectContaining({ mac: STRANGER, verdict: { answer: false, reason: 'not-booting' } }));
  }, 30_000);

  it('stands aside once a real router advertises on the segment', async () => {
    // A router elsewhere on the link: the helper itself sends its RA from a third namespace.
    const routerNs = await addClientNamespace(segment, { mac: ROUTER });
    const sender = routerNs.spawn(RA_IO_HELPER, ['eth0']);
    try {
      await new Promise<void>((resolve) => sender.stdout!.once('data', () => resolve()));
      const ra = buildRouterAdvertisement({ serverMac: ROUTER, serverLinkLocal: linkLocalFromMac(ROUTER), to: { mac: '33:33:00:00:00:01', source: Buffer.alloc(16) } });
      ra.writeUInt16BE(1800, 14 + 40 + 6); // router lifetime
      ra.writeUInt16BE(0, 14 + 40 + 2);
      ra.writeUInt16BE(checksum(ra.subarray(22, 38), ra.subarray(38, 54), ra.subarray(54)), 14 + 40 + 2);
      const record = Buffer.alloc(2);
      record.writeUInt16BE(ra.length);
      const heard = new Promise<void>((resolve) => {
        const poll = setInterval(() => {
          if (responder.policy.routerHeardAt !== null) {
            clearInterval(poll);
            resolve();
          }
        }, 20);
      });
      sender.stdin!.write(Buffer.concat([record, ra]));
      await heard;
      const before = events.length;
      await booting.exec('rdisc6', ['-1', '-n', '-r', '1', '-w', '500', 'eth0']).catch(() => undefined);
      await waitUntil(() => events.slice(before).some((e) => e.mac === BOOTING), 'a verdict on the booting machine', 20_000);
      expect(events.slice(before)).toContainEqual(expect.objectContaining({ mac: BOOTING, verdict: { answer: false, reason: 'router-present' } }));
    } finally {
      sender.stdin!.end();
      await routerNs.destroy();
    }
  }, 30_000);

  it('the helper refuses an interface that does not exist, and start() says why', async () => {
    await expect(
      RouterAdvertResponder.start({
        iface: { name: 'ipx-nosuch0', mac: BOOTING, linkLocal: ipv6Bytes('fe80::1')! },
        log: silentLogger,
        spawn: (cmd, args) => segment.spawn(cmd, args),
      }),
    ).rejects.toThrow(/ipx-nosuch0/);
  });
});

/** Waits (event-driven by polling the kernel's state) until the client's link-local address has finished DAD. */
async function linkLocalReady(client: ClientNamespace): Promise<void> {
  await waitUntil(
    async () => {
      const { stdout } = await client.exec('ip', ['-6', '-o', 'addr', 'show', 'dev', 'eth0', 'scope', 'link']);
      return stdout.includes('fe80::') && !stdout.includes('tentative');
    },
    'a link-local address on eth0 past DAD',
    60_000,
    50,
  );
}
