/**
 * bench/status-page: the fleet page with 1,000 machines in Debian's chromium (puppeteer-core).
 * Measures the server's render of `/`, the browser's first contentful paint and load, then
 * 100 updates: one burst (100 machines change at once: one SSE event) and 100 one after another
 * (each its own event), from the timeline record to the row in the DOM.
 *
 *   node --import tsx bench/status-page.ts [--machines 1000] [--updates 100]
 */
import { launchChromium, startLiveServer } from '../test/ui/live-server.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

const MACHINES = arg('machines', 1000);
const UPDATES = arg('updates', 100);
const READ = 'bench-status-read-token-01';
const mac = (i: number) => `52:54:00:61:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`;

const yaml = `server:\n  address: 127.0.0.1\n  identity:\n    check: off\n  api:\n    readToken: ${READ}\nimages:\n  demo:\n    source: docker:netboot/demo:latest\nmachines:\n${Array.from(
  { length: MACHINES },
  (_, i) => `  ${mac(i)}:\n    hostname: node${String(i).padStart(4, '0')}\n`,
).join('')}defaults:\n  image: demo\n`;

const server = await startLiveServer(yaml);
const browser = await launchChromium();
try {
  // A realistic mix: most up, some booting, a few failed, some never seen.
  for (let i = 0; i < MACHINES; i++) {
    if (i % 10 === 9) continue;
    server.timeline.record(mac(i), 'script', { source: 'http', imageId: 'benchid000001' });
    server.timeline.record(mac(i), 'kernel', { source: 'http', bytes: 8_000_000, durationMs: 300 });
    if (i % 10 === 8) continue;
    server.timeline.record(mac(i), 'init', { source: 'init', t: 2 });
    server.timeline.record(mac(i), i % 50 === 7 ? 'failed' : 'up', { source: 'init', t: 9, detail: i % 50 === 7 ? 'rootfs: HTTP 404' : 'multi-user' });
  }

  const auth = { authorization: `Bearer ${READ}` };
  const renders: number[] = [];
  let bytes = 0;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    const body = await (await fetch(`${server.url}/`, { headers: auth })).text();
    renders.push(performance.now() - t0);
    bytes = body.length;
  }

  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  await page.setExtraHTTPHeaders(auth);
  const t0 = performance.now();
  await page.goto(`${server.url}/`, { waitUntil: 'load' });
  const loadWall = performance.now() - t0;
  const paint = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming;
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    return { fcp: fcp?.startTime ?? null, domContentLoaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, rows: document.querySelectorAll('tr[data-mac]').length };
  });
  await page.waitForFunction(() => document.getElementById('live-status')?.dataset.state === 'open', { polling: 10 });

  const applied = () => page.evaluate(() => (window as unknown as { netbootLive: { rows: number; ms: number } }).netbootLive);
  // One burst: UPDATES machines change at once.
  const before = await applied();
  const b0 = performance.now();
  for (let i = 0; i < UPDATES; i++) server.timeline.record(mac(i), 'script', { source: 'http', imageId: 'benchid000002' });
  await page.waitForFunction((n: number) => (window as unknown as { netbootLive: { rows: number } }).netbootLive.rows >= n, { polling: 5, timeout: 120_000 }, before.rows + UPDATES);
  const burstWall = performance.now() - b0;
  const afterBurst = await applied();

  // One after another: each record waits for its row before the next.
  const s0 = performance.now();
  for (let i = 0; i < UPDATES; i++) {
    server.timeline.record(mac(i), 'kernel', { source: 'http', bytes: 1, durationMs: 1 });
    await page.waitForFunction((n: number) => (window as unknown as { netbootLive: { rows: number } }).netbootLive.rows >= n, { polling: 5, timeout: 120_000 }, afterBurst.rows + i + 1);
  }
  const sequentialWall = performance.now() - s0;
  const afterSequential = await applied();

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(
    JSON.stringify(
      {
        machines: MACHINES,
        rowsRendered: paint.rows,
        html: { bytes, serverRenderMsMedian: Math.round(median(renders)), serverRenderMsFirst: Math.round(renders[0]!) },
        browser: { firstContentfulPaintMs: paint.fcp && Math.round(paint.fcp), domContentLoadedMs: Math.round(paint.domContentLoaded), loadMs: Math.round(paint.load), gotoWallMs: Math.round(loadWall) },
        burst: { updates: UPDATES, recordToDomMs: Math.round(burstWall), domApplyMs: Math.round(afterBurst.ms - before.ms) },
        sequential: {
          updates: UPDATES,
          totalMs: Math.round(sequentialWall),
          perUpdateMs: Math.round(sequentialWall / UPDATES),
          domApplyMsPerUpdate: Math.round(((afterSequential.ms - afterBurst.ms) / UPDATES) * 100) / 100,
          note: 'each includes the hub flush delay (200 ms by default)',
        },
      },
      null,
      2,
    ),
  );
} finally {
  await browser.close();
  await server.close();
}
