/**
 * Issue 13, events and API: boot events need the per-boot token of their MAC, /api needs a
 * token, the timeline is bounded against made-up MACs, and a signed layer URL never reaches an
 * event or a log line. Everything over a real listening server (fetch on 127.0.0.1).
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Timeline } from '../../server/events/timeline.ts';
import { createHttpServer } from '../../server/http/server.ts';
import { readHostApiToken } from '../../server/layers/signing.ts';
import { addImage } from '../http/fixtures.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from '../http/setup.ts';
import { parsePrometheusText, sampleValue } from './prom-parse.ts';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const READ = 'read-token-read-token-1';
const ADMIN = 'admin-token-admin-token-2';
const OTHER = '52:54:00:00:00:02';
const OTHER_HYP = '52-54-00-00-00-02';
const STRANGER_HYP = '52-54-00-99-99-99';

/** Starts the harness's server on a free loopback port; returns its base URL. */
async function listen(harnessed: Harness): Promise<string> {
  await harnessed.app.listen({ host: '127.0.0.1', port: 0 });
  return `http://127.0.0.1:${(harnessed.app.server.address() as { port: number }).port}`;
}

function client(base: string) {
  const bearer = (token?: string): Record<string, string> => (token ? { authorization: `Bearer ${token}` } : {});
  return {
    get: (path: string, token?: string) => fetch(`${base}${path}`, { headers: bearer(token) }),
    post: (path: string, body: unknown, token?: string) =>
      fetch(`${base}${path}`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...bearer(token) } }),
    /** The per-machine script, and the event token and layer URL it hands /init. */
    async script(macHyp: string): Promise<{ token: string; boot: string; layer: string }> {
      const text = await (await fetch(`${base}/machines/${macHyp}/boot.ipxe`)).text();
      const token = /netboot\.token=(\S+)/.exec(text)![1]!;
      return { token, boot: token.split('.')[0]!, layer: /netboot\.layer=(\S+)/.exec(text)![1]! };
    },
  };
}

const twoMachines = (server = `  api:\n    readToken: ${READ}\n    adminToken: ${ADMIN}`) =>
  baseYaml({ server, machines: `  ${OTHER}:\n    hostname: other` });

describe('boot events need the event token of their MAC', () => {
  it('no token, a wrong one or another MAC\'s: 401 and nothing recorded; the right one: 202 on its boot', async () => {
    h = await harness(twoMachines());
    addImage(h.store, 'demo');
    const api = client(await listen(h));
    const mine = await api.script(MAC_HYP);
    const theirs = await api.script(OTHER_HYP);
    const before = JSON.stringify(h.timeline.boots(MAC));

    const forged = [undefined, 'nonsense', `${mine.boot}.${'0'.repeat(64)}`, theirs.token, `${theirs.boot}.${mine.token.split('.')[1]}`];
    for (const token of forged) {
      const res = await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'up', t: 1 }, token);
      expect(res.status, String(token)).toBe(401);
    }
    // A valid token names one MAC only: not an unknown one either, which is then not even created.
    expect((await api.post(`/api/machines/${STRANGER_HYP}/events`, { phase: 'failed', t: 1 }, mine.token)).status).toBe(401);
    for (let i = 0; i < 200; i++) {
      const mac = `02-00-00-00-${(i >> 8).toString(16).padStart(2, '0')}-${(i & 0xff).toString(16).padStart(2, '0')}`;
      expect((await api.post(`/api/machines/${mac}/events`, { phase: 'up', t: 1 })).status).toBe(401);
    }
    expect(JSON.stringify(h.timeline.boots(MAC))).toBe(before);
    expect(h.timeline.state(MAC)).toBe('booting');
    expect(h.timeline.has('52:54:00:99:99:99')).toBe(false);
    const listed = (await (await api.get('/api/machines', READ)).json()) as { machines: { mac: string }[] };
    expect(listed.machines.map((m) => m.mac)).toEqual([OTHER, MAC]);

    // The refusals show on the configured victim as security events (no boot opened), and in /metrics.
    const victim = (await (await api.get(`/api/machines/${MAC_HYP}`, READ)).json()) as { security: { kind: string; peer?: string }[]; boots: unknown[] };
    expect(victim.security).toHaveLength(forged.length);
    expect(victim.security.every((e) => e.kind === 'event-token' && e.peer === '127.0.0.1')).toBe(true);
    expect(victim.boots).toHaveLength(1);
    const families = parsePrometheusText(await (await api.get('/metrics')).text());
    expect(sampleValue(families, 'netboot_security_events_total', { kind: 'event-token' })).toBe(forged.length + 201);

    const ok = await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'up', t: 9, detail: 'multi-user.target' }, mine.token);
    expect(ok.status).toBe(202);
    expect(await ok.json()).toEqual({ boot: mine.boot, state: 'up' });
    expect(h.timeline.current(MAC)!.phases.map((p) => `${p.source}:${p.phase}`)).toEqual(['http:script', 'init:up']);
  });

  it('an event joins the boot its token names while that boot is kept; an older boot gets 410', async () => {
    h = await harness(twoMachines());
    addImage(h.store, 'demo');
    const api = client(await listen(h));
    const first = await api.script(MAC_HYP);
    expect((await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'init', t: 1 }, first.token)).status).toBe(202);
    const second = await api.script(MAC_HYP);
    expect(second.boot).not.toBe(first.boot);
    // A late event of the first boot lands on the first boot, not on the one in progress.
    expect(await (await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'failed', t: 2, detail: 'late' }, first.token)).json()).toEqual({
      boot: first.boot,
      state: 'failed',
    });
    expect(h.timeline.state(MAC)).toBe('booting');
    for (let i = 0; i < 5; i++) {
      const next = await api.script(MAC_HYP);
      await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'init', t: 1 }, next.token);
    }
    expect(h.timeline.boots(MAC).map((b) => b.id)).not.toContain(first.boot);
    const kept = JSON.stringify(h.timeline.boots(MAC));
    expect((await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'up', t: 3 }, first.token)).status).toBe(410);
    expect(JSON.stringify(h.timeline.boots(MAC))).toBe(kept);
  });

  it('after a server restart (nothing in memory) a valid token opens its boot under the same id', async () => {
    h = await harness(twoMachines());
    addImage(h.store, 'demo');
    const { token, boot } = await client(await listen(h)).script(MAC_HYP);
    // Same state dir (same install key), a timeline that remembers nothing.
    const timeline = new Timeline({ isConfigured: (mac) => h!.config.machines.has(mac) });
    const restarted = await createHttpServer({ ...h.deps, timeline });
    try {
      await restarted.listen({ host: '127.0.0.1', port: 0 });
      const api = client(`http://127.0.0.1:${(restarted.server.address() as { port: number }).port}`);
      expect(await (await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'up', t: 1 }, token)).json()).toEqual({ boot, state: 'up' });
      expect(timeline.boots(MAC).map((b) => b.id)).toEqual([boot]);
    } finally {
      await restarted.close();
    }
  });
});

describe("a boot's signed layer URL closes once /init reported its layer", () => {
  it('a second fetch (a local user reading /proc/cmdline) gets 410 after the layer event; a failed boot closes it too', async () => {
    h = await harness(twoMachines());
    addImage(h.store, 'demo');
    const base = await listen(h);
    const api = client(base);
    const layerPath = (url: string) => url.replace(/^http:\/\/[^/]+/, '');
    const boot = await api.script(MAC_HYP);
    expect((await fetch(`${base}${layerPath(boot.layer)}`)).status).toBe(200);
    expect((await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'layer', t: 2, detail: '12 entries' }, boot.token)).status).toBe(202);
    const again = await fetch(`${base}${layerPath(boot.layer)}`);
    expect(again.status).toBe(410);
    expect(await again.text()).not.toContain('PRIVATE KEY');

    const failed = await api.script(MAC_HYP);
    expect((await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'failed', t: 1, detail: 'no link' }, failed.token)).status).toBe(202);
    expect((await fetch(`${base}${layerPath(failed.layer)}`)).status).toBe(410);
    // Events before the layer leave it open.
    const early = await api.script(MAC_HYP);
    expect((await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'net', t: 1 }, early.token)).status).toBe(202);
    expect((await fetch(`${base}${layerPath(early.layer)}`)).status).toBe(200);
  });
});

describe('the timeline is bounded', () => {
  it('1,000 unknown MACs over HTTP (ten times the LRU) do not push a configured machine out', async () => {
    // The harness's config decides what is configured; this timeline's LRU is small to keep the test short.
    let config: Harness['config'] | undefined;
    const timeline = new Timeline({ isConfigured: (mac) => config!.machines.has(mac), maxUnknownMachines: 100 });
    h = await harness(twoMachines(), {}, { timeline });
    config = h.config;
    addImage(h.store, 'demo');
    const api = client(await listen(h));
    const mine = await api.script(MAC_HYP);
    await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'up', t: 1 }, mine.token);
    const total = 1_000;
    const base = `http://127.0.0.1:${(h.app.server.address() as { port: number }).port}`;
    const hex = (n: number) => (n & 0xff).toString(16).padStart(2, '0');
    let next = 0;
    // Unknown MACs get the menu (policy menu) and a `script` phase on their own timeline.
    const worker = async () => {
      while (next < total) {
        const i = next++;
        const res = await fetch(`${base}/machines/02-00-00-${hex(i >> 16)}-${hex(i >> 8)}-${hex(i)}/boot.ipxe`);
        expect(res.status).toBe(200);
        await res.arrayBuffer();
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    expect(timeline.macs()).toHaveLength(1 + 100);
    expect(timeline.macs()[0]).toBe(MAC);
    expect(timeline.state(MAC)).toBe('up');
    const summary = (await (await api.get(`/api/machines/${MAC_HYP}`, READ)).json()) as { state: string };
    expect(summary.state).toBe('up');
  }, 60_000);

  it('a boot keeps its first 256 phase records and counts the rest; details are clipped', async () => {
    h = await harness(twoMachines());
    addImage(h.store, 'demo');
    const api = client(await listen(h));
    const mine = await api.script(MAC_HYP);
    for (let i = 0; i < 300; i++) {
      expect((await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'net', t: i, detail: 'x'.repeat(4000) }, mine.token)).status).toBe(202);
    }
    const boot = h.timeline.current(MAC)!;
    expect(boot.id).toBe(mine.boot);
    expect(boot.phases).toHaveLength(256);
    expect(boot.droppedPhases).toBe(301 - 256);
    expect(boot.phases[1]!.detail!.length).toBeLessThan(600);
  });

  it('unit: a configured MAC survives 10,000 unknown ones; security events are bounded and open no boot', () => {
    const timeline = new Timeline({ isConfigured: (mac) => mac === MAC });
    timeline.record(MAC, 'script', { source: 'http' });
    for (let i = 0; i < 10_000; i++) timeline.record(`02:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`, 'dhcp', { source: 'dhcp' });
    expect(timeline.macs()).toHaveLength(1 + 1024);
    expect(timeline.macs()[0]).toBe(MAC);
    expect(timeline.boots(MAC)).toHaveLength(1);
    for (let i = 0; i < 100; i++) timeline.security(MAC, { kind: 'layer-peer', detail: `try ${i}`, peer: '10.0.0.9' });
    expect(timeline.securityEvents(MAC)).toHaveLength(32);
    expect(timeline.securityEvents(MAC).at(-1)).toMatchObject({ kind: 'layer-peer', detail: 'try 99', peer: '10.0.0.9' });
    expect(timeline.boots(MAC)).toHaveLength(1);
  });
});

describe('/api needs a token', () => {
  it('reads: read or admin token; mutations: admin only; /metrics and /healthz open', async () => {
    const calls: string[] = [];
    h = await harness(twoMachines(), {}, { rebuild: (name: string) => calls.push(name) });
    const api = client(await listen(h));
    for (const path of ['/api/machines', `/api/machines/${MAC_HYP}`, '/api/images']) {
      expect((await api.get(path)).status, path).toBe(401);
      expect((await api.get(path, 'wrong-token-wrong-token')).status, path).toBe(403);
      expect((await api.get(path, READ)).status, path).toBe(200);
      expect((await api.get(path, ADMIN)).status, path).toBe(200);
    }
    expect((await api.post('/api/images/demo/rebuild', {}, READ)).status).toBe(403);
    expect((await api.post('/api/images/demo/rebuild', {})).status).toBe(401);
    expect(calls).toEqual([]);
    expect((await api.post('/api/images/demo/rebuild', {}, ADMIN)).status).toBe(202);
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls).toEqual(['demo']);
    expect((await api.get('/metrics')).status).toBe(200);
    expect((await api.get('/healthz')).status).toBe(200);
  });

  it('no token configured: reads are refused naming the field to set; the host token (state dir) still reads', async () => {
    h = await harness(baseYaml());
    const api = client(await listen(h));
    const res = await api.get('/api/machines');
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: string }).error).toMatch(/server\.api\.readToken/);
    const hostToken = readHostApiToken(h.config.server.stateDir);
    expect(hostToken).toMatch(/^[0-9a-f]{64}$/);
    expect((await api.get('/api/machines', hostToken!)).status).toBe(200);
    expect((await api.post('/api/images/demo/rebuild', {}, hostToken!)).status).toBe(404);
    expect((await api.get('/metrics')).status).toBe(200);
    expect((await api.get('/healthz')).status).toBe(200);
  });

  it('server.api.public opens reads only; server.apiToken still works as the admin token', async () => {
    const calls: string[] = [];
    h = await harness(baseYaml({ server: `  apiToken: ${ADMIN}\n  api:\n    public: true` }), {}, { rebuild: (name: string) => calls.push(name) });
    const api = client(await listen(h));
    expect((await api.get('/api/machines')).status).toBe(200);
    expect((await api.post('/api/images/demo/rebuild', {})).status).toBe(401);
    expect((await api.post('/api/images/demo/rebuild', {}, ADMIN)).status).toBe(202);
  });
});

describe('a signed layer URL never reaches an event or a log line', () => {
  it('a failed event quoting the signed URL is stored and logged without the signature', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        done();
      },
    });
    h = await harness(twoMachines(), {}, { log: pino({ level: 'info', base: undefined }, sink) });
    addImage(h.store, 'demo');
    const api = client(await listen(h));
    const { token, layer } = await api.script(MAC_HYP);
    const sig = /sig=([0-9a-f]{64})/.exec(layer)![1]!;
    const detail = `layer: ${layer}: wget: server returned error: HTTP/1.1 403 Forbidden`;
    expect((await api.post(`/api/machines/${MAC_HYP}/events`, { phase: 'failed', t: 5, detail }, token)).status).toBe(202);
    // The signed URL as a request too (the layer route answers whatever it answers): its log line is redacted.
    await (await fetch(layer.replace('http://127.0.0.1:8080', `http://127.0.0.1:${(h.app.server.address() as { port: number }).port}`))).arrayBuffer();

    const machine = await (await api.get(`/api/machines/${MAC_HYP}`, READ)).text();
    expect(machine).not.toContain(sig);
    expect(machine).toContain('sig=…');
    await new Promise((resolve) => setImmediate(resolve));
    const failedLine = lines.find((l) => l.includes('boot failed'));
    expect(failedLine).toContain('sig=…');
    expect(lines.join('\n')).not.toContain(sig);
  });
});
