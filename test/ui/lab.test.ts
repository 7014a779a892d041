import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab } from '../../server/lab/lab.ts';
import { addClientNamespace, type ClientNamespace } from '../../server/lab/netns.ts';
import { addImage, DirArtifactStore } from '../http/fixtures.ts';
import { CHROMIUM } from './live-server.ts';

/**
 * The status page of a real `netboot serve` in a namespace (10.88.60.0/24, proxy DHCP beside the
 * lab's dnsmasq), with chromium running in that namespace too: a stranger's real PXE DHCP packet
 * (vendor class, architecture) lands in the inbox, Add writes the config, the server's own
 * watcher reloads it, and the stranger's next script request gets the image, live on the fleet page.
 */
const SERVER = '10.88.60.1';
const BASE = `http://${SERVER}:8080`;
const STRANGER = '52:54:00:60:00:aa';
const READ = 'ui-lab-read-token-00000001';
const ADMIN = 'ui-lab-admin-token-0000001';
const VENDOR = 'PXEClient:Arch:00007:UNDI:003016';

/** A PXE DHCPDISCOVER as UEFI firmware sends it: option 60 (vendor class) and 93 (arch 7). */
const PXE_DISCOVER = `
import socket, sys
mac = bytes.fromhex(sys.argv[1].replace(':', ''))
vendor = sys.argv[2].encode()
# op htype hlen hops, xid, then secs flags ciaddr yiaddr siaddr giaddr (20 bytes): chaddr at 28, the cookie at 236
p = bytes([1, 1, 6, 0]) + b'\\x60\\x60\\x60\\x01' + bytes(20) + mac + bytes(10) + bytes(192)
p += b'\\x63\\x82\\x53\\x63' + bytes([53, 1, 1, 60, len(vendor)]) + vendor + bytes([93, 2, 0, 7, 255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(('0.0.0.0', 68))
s.sendto(p, ('255.255.255.255', 67))
`;

let dir: string;
let lab: Lab | undefined;
let stranger: ClientNamespace | undefined;
let browser: Browser | undefined;
let configFile: string;
let imageId: string;

async function curl(path: string): Promise<{ status: number; body: string }> {
  const { stdout } = await stranger!.exec('curl', ['-sS', '-m', '10', '-w', '\n%{http_code}', `${BASE}${path}`]);
  const cut = stdout.lastIndexOf('\n');
  return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
}

/** Waits for the running server's log to say it reloaded the config (as Lab.writeConfig does). */
async function reloaded(before: number, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const log = await readFile(lab!.serverLog, 'utf8').catch(() => '');
    if (log.split('"msg":"config reloaded"').length > before) return;
    if (Date.now() > deadline) throw new Error(`no reload within ${timeoutMs / 1000} s; see ${lab!.serverLog}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
const reloadCount = async () => (await readFile(lab!.serverLog, 'utf8').catch(() => '')).split('"msg":"config reloaded"').length;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'netboot-ui-lab-'));
  const images = join(dir, 'cache', 'images');
  await mkdir(images, { recursive: true });
  imageId = addImage(new DirArtifactStore(images), 'demo').id;
  await writeFile(join(images, 'demo.current'), JSON.stringify({ id: imageId }));
  configFile = join(dir, 'netboot.yaml');
  await writeFile(
    configFile,
    `# the lab of the status page test
server:
  address: ${SERVER}
  stateDir: ${join(dir, 'state')}
  cacheDir: ${join(dir, 'cache')}
  api:
    readToken: ${READ}     # dashboards
    adminToken: ${ADMIN}   # people who add machines

images:
  demo:
    source: oci-archive:${join(dir, 'never-built.tar')}

# machines are added from the status page's inbox
machines: {}

defaults:
  image: demo
  unknown: menu
`,
  );
  lab = await Lab.start({ configFile, logDir: join(dir, 'logs') });
  stranger = await addClientNamespace(lab.segment, { mac: STRANGER });
  const applyLease = join(dir, 'udhcpc.sh');
  await writeFile(applyLease, '#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/24" dev "$interface" ;; esac\n', { mode: 0o755 });
  await stranger.exec('busybox', ['udhcpc', '-i', 'eth0', '-n', '-q', '-t', '5', '-T', '1', '-s', applyLease], { timeoutMs: 30_000 });
  // Chromium runs in the server's namespace: the page is reachable only there.
  const wrapper = join(dir, 'chromium-in-lab');
  await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${lab.segment.ns} ${CHROMIUM} "$@"\n`);
  await chmod(wrapper, 0o755);
  browser = await puppeteer.launch({ executablePath: wrapper, headless: true, pipe: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'] });
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await stranger?.destroy();
  await lab?.close();
  if (dir && !process.env.NETBOOT_UI_KEEP) await rm(dir, { recursive: true, force: true });
});

describe('status page of netboot serve', () => {
  it('a PXE stranger shows in the inbox with its vendor class and arch; Add → config reload → it gets its image, live on the fleet page', async () => {
    await stranger!.exec('python3', ['-c', PXE_DISCOVER, STRANGER, VENDOR]);
    const menu = await curl(`/machines/${STRANGER.replace(/:/g, '-')}/boot.ipxe`);
    expect(menu.status).toBe(200);
    expect(menu.body).not.toContain('netboot.token=');

    const page = await browser!.newPage();
    await page.goto(`${BASE}/inbox`);
    expect(page.url()).toBe(`${BASE}/login`);
    await page.type('#token', ADMIN);
    await Promise.all([page.waitForNavigation(), page.click('.login button')]);
    await page.goto(`${BASE}/inbox`);
    const row = `tr[data-mac="${STRANGER}"]`;
    const seen = await page.$eval(row, (tr) => tr.textContent);
    expect(seen).toContain(VENDOR);
    expect(seen).toContain('x86-64 UEFI');
    expect(seen).toContain('unknown MAC, policy menu');

    const before = await reloadCount();
    await page.type(`${row} input[name=hostname]`, 'stray1');
    await Promise.all([page.waitForNavigation(), page.click(`${row} button[type=submit]`)]);
    expect(page.url()).toContain('/inbox?added=');
    const text = await readFile(configFile, 'utf8');
    expect(text).toContain('# the lab of the status page test');
    expect(text).toContain('# machines are added from the status page\'s inbox');
    expect(text).toContain('# people who add machines');
    expect(text).toMatch(/52:54:00:60:00:aa:\s*\{?\s*hostname: stray1,?\s*image: demo/);
    await reloaded(before);

    await page.goto(`${BASE}/`);
    await page.waitForFunction(() => document.getElementById('live-status')?.dataset.state === 'open', { timeout: 30_000, polling: 100 });
    expect(await page.$eval(row, (tr) => tr.textContent)).toContain('stray1');
    // Its next try: DHCP again (identity evidence), then the script: now its image, with an event token.
    await stranger!.exec('python3', ['-c', PXE_DISCOVER, STRANGER, VENDOR]);
    const script = await curl(`/machines/${STRANGER.replace(/:/g, '-')}/boot.ipxe`);
    expect(script.status).toBe(200);
    expect(script.body).toContain(`/images/${imageId}/vmlinuz`);
    expect(script.body).toContain('netboot.token=');
    await page.waitForFunction(
      (sel: string) => document.querySelector(sel)?.textContent?.includes('booting · script') ?? false,
      { timeout: 30_000, polling: 100 },
      row,
    );
    await page.close();
  }, 180_000);
});
