import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addClientNamespace, type ClientNamespace } from '../lab/netns.ts';
import { waitUntil } from '../lab/wait-until.ts';
import { Lab } from '../../server/lab/lab.ts';

const BOOTING = '52:54:00:88:52:01';
const STRANGER = '52:54:00:88:52:02';

/**
 * `netboot serve` (ipv6RouterAdvert: auto, the default) on a segment with no IPv6 router: a
 * PXE DHCP DISCOVER it answers with a boot file opens that MAC's window, and the MAC's router
 * solicitation then gets netboot's RA; a MAC it never gave a boot file gets nothing. Real
 * peers: busybox udhcpc with a PXE vendor class, rdisc6.
 */
describe('netboot serve answers router solicitations of the machines it boots', () => {
  let dir: string;
  let lab: Lab;
  let booting: ClientNamespace;
  let stranger: ClientNamespace;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ipx-serve-'));
    const configFile = join(dir, 'netboot.yaml');
    await writeFile(
      configFile,
      [
        'server:',
        '  address: 10.88.52.1',
        '  httpPort: 8080',
        '  dhcp: { mode: proxy }',
        '  stateDir: ./state',
        '  cacheDir: ./cache',
        'images:',
        '  none: { source: "oci-archive:/nonexistent/ipx-serve.tar" }',
        'machines:',
        `  ${BOOTING}: {}`,
        `  ${STRANGER}: {}`,
        '',
      ].join('\n'),
    );
    lab = await Lab.start({ configFile, logDir: dir, routerAdvertisements: false, labDhcp: false });
    booting = await addClientNamespace(lab.segment, { mac: BOOTING });
    stranger = await addClientNamespace(lab.segment, { mac: STRANGER });
  }, 180_000);

  afterAll(async () => {
    await booting?.destroy();
    await stranger?.destroy();
    await lab?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const serverLog = () => readFile(lab.serverLog, 'utf8');

  it('opens a window on the PXE DHCP answer and answers that MAC with an RA that advertises nothing', async () => {
    // A DISCOVER as BIOS PXE firmware would send it (no address server here: udhcpc gives up),
    // until the server has logged its answer (a frame sent while the new veth comes up may be lost).
    const answeredDhcp = new RegExp(`"mac":"${BOOTING}".*undionly\\.kpxe`);
    for (let attempt = 0; attempt < 5 && !answeredDhcp.test(await serverLog()); attempt++) {
      await booting.exec('busybox', ['udhcpc', '-i', 'eth0', '-n', '-q', '-f', '-t', '1', '-T', '1', '-s', '/bin/true', '-V', 'PXEClient:Arch:00000:UNDI:002001']).catch(() => undefined);
    }
    expect(await serverLog()).toMatch(answeredDhcp);
    const { stdout } = await booting.exec('rdisc6', ['-1', '-n', '-r', '5', '-w', '2000', 'eth0']);
    expect(stdout).toMatch(/Router lifetime\s*:\s*0 \(0x00000000\) seconds/);
    expect(stdout).not.toMatch(/Prefix/);
    // The RA can reach rdisc6 before the server's log line reaches the file.
    await waitUntil(async () => (await serverLog()).includes('answered a router solicitation'), 'the answer in the server log', 30_000);
    const answered = (await serverLog()).split('\n').filter((line) => line.includes('answered a router solicitation'));
    expect(answered.length).toBeGreaterThan(0);
    expect(answered.every((line) => line.includes(`"mac":"${BOOTING}"`))).toBe(true);
  }, 60_000);

  it('does not answer a configured machine it has not started booting', async () => {
    const outcome = await stranger.exec('rdisc6', ['-1', '-n', '-r', '2', '-w', '500', 'eth0']).then(
      (r) => r.stdout,
      (err: { stdout: string; stderr: string }) => `${err.stdout}${err.stderr}`,
    );
    expect(outcome).toMatch(/No response/);
    expect(await serverLog()).not.toMatch(new RegExp(`"mac":"${STRANGER}"[^\\n]*answered a router solicitation`));
  }, 30_000);
});
