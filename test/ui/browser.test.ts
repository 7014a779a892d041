import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addImage, type FakeImage } from '../http/fixtures.ts';
import { launchChromium, startLiveServer, type LiveServer } from './live-server.ts';

const READ = 'ui-browser-read-token-0001';
const ADMIN = 'ui-browser-admin-token-0001';
const MAC = '52:54:00:60:00:01';
const FAILING = '52:54:00:60:00:02';
const STRANGER = '52:54:00:60:00:99';
const hyphens = (mac: string) => mac.replace(/:/g, '-');

const CONFIG = `# netboot lab config (status page test)
server:
  address: 127.0.0.1
  identity:
    check: off   # requests come from loopback, not from the machines
  api:
    readToken: ${READ}
    adminToken: ${ADMIN}

images:
  demo:
    source: docker:netboot/demo:latest
    cmdline: console=ttyS0

# The rack: keep it sorted by hostname.
machines:
  ${MAC}:
    hostname: web1   # front
    vars:
      role: web
      apiPassword: hunter2
  ${FAILING}:
    hostname: db1

defaults:
  image: demo
  unknown: menu
`;

let server: LiveServer;
let browser: Browser;
let image: FakeImage;
/** The image builds as the server reports them (the real ones need docker: tested in test/app/). */
const build: { state: 'idle' | 'building' | 'failed'; error?: string; progress?: { phase: string; bytes: number; totalBytes?: number; rate?: number }; requested: string[] } = {
  state: 'idle',
  requested: [],
};

beforeAll(async () => {
  server = await startLiveServer(CONFIG, {
    rebuild: (name) => {
      build.requested.push(name);
      build.state = 'building';
      build.progress = { phase: 'pull', bytes: 10 << 20, totalBytes: 40 << 20, rate: 5 << 20 };
    },
  });
  Object.assign(server.artifacts, {
    buildState: () => build.state,
    buildError: () => build.error,
    buildProgress: () => build.progress,
  });
  image = addImage(server.artifacts, 'demo');
  browser = await launchChromium();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

async function login(page: Page, token: string): Promise<void> {
  await page.goto(`${server.url}/login`);
  await page.type('#token', token);
  await Promise.all([page.waitForNavigation(), page.click('.login button')]);
}

/** The machine's own requests: its script (which hands /init its event token), kernel and initrd. */
async function fetchScript(mac: string): Promise<string> {
  const res = await fetch(`${server.url}/machines/${hyphens(mac)}/boot.ipxe`);
  expect(res.status).toBe(200);
  return res.text();
}

async function postEvent(mac: string, token: string, event: Record<string, unknown>): Promise<void> {
  const res = await fetch(`${server.url}/api/machines/${hyphens(mac)}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify(event),
  });
  expect(res.status).toBe(202);
}

const eventToken = (script: string) => /netboot\.token=(\S+)/.exec(script)![1]!;
const rowText = (page: Page, mac: string) => page.$eval(`tr[data-mac="${mac}"]`, (tr) => `${(tr as HTMLElement).dataset.state} ${tr.textContent}`);
const waitRow = (page: Page, mac: string, text: string, where = 'tr') =>
  page.waitForFunction(
    (sel: string, want: string) => {
      const tr = document.querySelector(sel) as HTMLElement | null;
      return tr !== null && `${tr.dataset.state} ${tr.textContent}`.includes(want);
    },
    // Polling, not requestAnimationFrame: a background tab gets no animation frames.
    { timeout: 30_000, polling: 100 },
    `${where}[data-mac="${mac}"]`,
    text,
  );
const waitLive = (page: Page) => page.waitForFunction(() => document.getElementById('live-status')?.dataset.state === 'open', { timeout: 30_000, polling: 100 });

describe('status page in chromium', () => {
  it('without a token nothing is readable', async () => {
    const page = await browser.newPage();
    const res = await page.goto(`${server.url}/`);
    expect(page.url()).toBe(`${server.url}/login`);
    expect(res!.status()).toBe(200);
    const text = await page.content();
    expect(text).not.toContain('web1');
    expect(text).not.toContain(MAC);
    expect(await page.evaluate(async () => (await fetch('/ui/events?topic=fleet')).status)).toBe(401);
    expect(await page.evaluate(async () => (await fetch(`/machines/52:54:00:60:00:01`, { redirect: 'manual' })).type)).toBe('opaqueredirect');
    await page.close();
  });

  it('a read session watches a machine move through its phases live, and cannot rebuild or add', async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('console', (m) => void (m.type() === 'error' && errors.push(m.text())));
    page.on('pageerror', (e) => void errors.push(String(e)));
    await page.setViewport({ width: 1280, height: 800 });
    await login(page, READ);
    expect(page.url()).toBe(`${server.url}/`);
    await waitLive(page);
    expect(await rowText(page, MAC)).toContain('never');

    const token = eventToken(await fetchScript(MAC));
    await waitRow(page, MAC, 'booting · script');
    await fetch(`${server.url}/images/${image.id}/vmlinuz?mac=${hyphens(MAC)}`).then((r) => r.arrayBuffer());
    await waitRow(page, MAC, 'booting · kernel');
    await fetch(`${server.url}/images/${image.id}/initrd.img?mac=${hyphens(MAC)}`).then((r) => r.arrayBuffer());
    await waitRow(page, MAC, 'booting · initrd');
    for (const [phase, t] of [['init', 2.1], ['net', 2.6], ['layer', 3.2], ['rootfs', 5.9], ['switch_root', 6.3]] as const) {
      await postEvent(MAC, token, { phase, t, ...(phase === 'rootfs' ? { bytes: 52_428_800 } : {}) });
      await waitRow(page, MAC, `booting · ${phase}`);
    }
    await postEvent(MAC, token, { phase: 'up', t: 9.4, detail: 'multi-user.target' });
    await waitRow(page, MAC, 'up');
    const shown = await rowText(page, MAC);
    expect(shown).toContain('web1');
    expect(shown).toContain(image.id.slice(0, 12));
    // Pushed, not reloaded: the page applied the rows the stream sent.
    expect(await page.evaluate(() => (window as unknown as { netbootLive: { rows: number } }).netbootLive.rows)).toBeGreaterThan(0);

    // Filter: a search for the other host hides this row; Escape clears it.
    await page.keyboard.press('/');
    await page.keyboard.type('db1');
    expect(await page.$eval(`tr[data-mac="${MAC}"]`, (tr) => (tr as HTMLElement).hidden)).toBe(true);
    await page.keyboard.press('Escape');
    expect(await page.$eval(`tr[data-mac="${MAC}"]`, (tr) => (tr as HTMLElement).hidden)).toBe(false);
    // Keyboard: Tab from the filters reaches the rows' links (the machine pages).
    await page.focus('#unknown');
    await page.keyboard.press('Tab');
    expect(await page.evaluate(() => document.activeElement?.getAttribute('href'))).toMatch(/^\/machines\//);
    // No script errors, no CSP violations (an inline handler would be one).
    expect(errors).toEqual([]);

    const artifacts = join(server.dir, 'artifacts');
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'fleet.png'), fullPage: true });
    if (process.env.NETBOOT_UI_SCREENSHOTS) copyFileSync(join(artifacts, 'fleet.png'), join(process.env.NETBOOT_UI_SCREENSHOTS, 'fleet.png'));

    // The machine page: a waterfall with every phase, and no secrets in its config.
    await page.goto(`${server.url}/machines/${MAC}`);
    const phases = await page.$$eval('.waterfall .wf-label', (els) => els.map((e) => e.textContent));
    expect(phases).toEqual(['script (http)', 'kernel (http)', 'initrd (http)', 'init (init)', 'net (init)', 'layer (init)', 'rootfs (init)', 'switch_root (init)', 'up (init)']);
    const body = await page.content();
    expect(body).toContain('50.0 MiB');
    expect(body).toContain('apiPassword=(hidden)');
    expect(body).not.toContain('hunter2');

    // Read-only: no Add form, no rebuild button, and a forged POST with this session's CSRF token is refused.
    await page.goto(`${server.url}/images`);
    expect(await page.$('form[action$="/rebuild"]')).toBeNull();
    const status = await page.evaluate(async () => {
      const csrf = (document.querySelector('input[name=_csrf]') as HTMLInputElement).value;
      const add = await fetch('/inbox/add', { method: 'POST', body: new URLSearchParams({ _csrf: csrf, mac: '52:54:00:60:00:77', hostname: 'x', image: 'demo' }) });
      const rebuild = await fetch('/images/demo/rebuild', { method: 'POST', body: new URLSearchParams({ _csrf: csrf }) });
      return [add.status, rebuild.status];
    });
    expect(status).toEqual([403, 403]);
    await page.goto(`${server.url}/inbox`);
    expect(await page.$('form[action="/inbox/add"]')).toBeNull();
    await page.close();
  }, 120_000);

  it('a failed boot turns red with the failing step, live on the fleet and the machine page', async () => {
    const fleet = await browser.newPage();
    await login(fleet, READ);
    await waitLive(fleet);
    const machine = await browser.newPage();
    await machine.setViewport({ width: 1280, height: 900 });
    const token = eventToken(await fetchScript(FAILING));
    await machine.goto(`${server.url}/machines/${FAILING}`);
    await waitLive(machine);
    await postEvent(FAILING, token, { phase: 'init', t: 2 });
    await postEvent(FAILING, token, { phase: 'net', t: 2.5 });
    await postEvent(FAILING, token, { phase: 'failed', t: 4.25, detail: `rootfs: GET ${server.url}/images/${image.id}/rootfs.squashfs: HTTP 404` });
    await waitRow(fleet, FAILING, 'failed at rootfs', '#attention tr');
    await machine.waitForFunction(() => document.querySelector('.failure strong')?.textContent === 'rootfs', { timeout: 30_000, polling: 100 });
    expect(await machine.$eval('.failure pre', (e) => e.textContent)).toContain('HTTP 404');
    expect(await machine.$eval('.wf-row.p-failed .wf-facts', (e) => e.textContent)).toContain('1.8 s');
    const color = await machine.$eval('.failure', (e) => getComputedStyle(e).borderColor);
    expect(color).toBe('rgb(164, 14, 38)');
    const artifacts = join(server.dir, 'artifacts');
    await machine.screenshot({ path: join(artifacts, 'machine.png'), fullPage: true });
    if (process.env.NETBOOT_UI_SCREENSHOTS) copyFileSync(join(artifacts, 'machine.png'), join(process.env.NETBOOT_UI_SCREENSHOTS, 'machine.png'));
    await fleet.close();
    await machine.close();
  }, 120_000);

  it('an unknown MAC appears in the inbox; Add writes the config (comments intact) and the reload picks it up', async () => {
    const unknownScript = await fetchScript(STRANGER);
    expect(unknownScript).not.toContain('netboot.token=');
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    await login(page, ADMIN);
    await page.goto(`${server.url}/inbox`);
    expect(await page.$eval(`tr[data-mac="${STRANGER}"]`, (tr) => tr.textContent)).toContain('unknown MAC, policy menu');
    await page.type(`tr[data-mac="${STRANGER}"] input[name=hostname]`, 'new1');
    await page.select(`tr[data-mac="${STRANGER}"] select[name=image]`, 'demo');
    await Promise.all([page.waitForNavigation(), page.click(`tr[data-mac="${STRANGER}"] button[type=submit]`)]);
    expect(page.url()).toContain(`/inbox?added=${encodeURIComponent(STRANGER)}`);

    const text = readFileSync(server.file, 'utf8');
    expect(text.startsWith('# netboot lab config (status page test)\n')).toBe(true);
    for (const kept of ['# The rack: keep it sorted by hostname.', '# front', '# requests come from loopback, not from the machines']) expect(text).toContain(kept);
    expect(text).toContain(`  ${STRANGER}:\n    hostname: new1\n    image: demo\n`);

    while (!server.store.current.machines.has(STRANGER)) await new Promise((resolve) => server.store.once('change', resolve));
    expect(server.store.current.machines.get(STRANGER)!.hostname).toBe('new1');
    // Its next try boots the image.
    expect(await fetchScript(STRANGER)).toContain(`/images/${image.id}/vmlinuz`);
    // Adding it twice is refused with a message, the file unchanged.
    const again = await page.evaluate(async (mac: string) => {
      const csrf = (document.querySelector('input[name=_csrf]') as HTMLInputElement).value;
      const res = await fetch('/inbox/add', { method: 'POST', body: new URLSearchParams({ _csrf: csrf, mac, hostname: 'new2', image: 'demo' }) });
      return { status: res.status, text: await res.text() };
    }, STRANGER);
    expect(again.status).toBe(409);
    expect(again.text).toContain(`Not added: ${STRANGER} is already in the config`);
    expect(readFileSync(server.file, 'utf8')).toBe(text);
    await context.close();
  }, 120_000);

  it('images: an admin rebuilds, a read-only viewer watches the build progress and its error live', async () => {
    const viewer = await browser.newPage();
    await login(viewer, READ);
    await viewer.goto(`${server.url}/images`);
    await waitLive(viewer);
    expect(await viewer.$eval('#live', (e) => e.textContent)).toContain('ready');
    expect(await viewer.$('form[action$="/rebuild"]')).toBeNull();

    const context = await browser.createBrowserContext();
    const admin = await context.newPage();
    await login(admin, ADMIN);
    await admin.goto(`${server.url}/images`);
    await Promise.all([admin.waitForNavigation(), admin.click('form[action="/images/demo/rebuild"] button')]);
    expect(build.requested).toEqual(['demo']);

    const progress = 'pull 10.0 MiB / 40.0 MiB · 5.0 MiB/s · ETA 0:06';
    await viewer.waitForFunction((want: string) => document.getElementById('live')!.textContent!.includes(want), { timeout: 30_000, polling: 100 }, progress);
    build.state = 'failed';
    build.error = 'pull docker:netboot/demo:latest: manifest unknown';
    await viewer.waitForFunction(() => document.querySelector('#live .failure pre')?.textContent?.includes('manifest unknown'), { timeout: 30_000, polling: 100 });
    expect(await viewer.$eval('#live h2 .state', (e) => e.textContent)).toBe('failed');
    build.state = 'idle';
    await context.close();
    await viewer.close();
  }, 120_000);
});
