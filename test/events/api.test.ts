import { afterEach, describe, expect, it } from 'vitest';
import { addImage } from '../http/fixtures.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from '../http/setup.ts';
import { parsePrometheusText, sampleValue } from './prom-parse.ts';

let h: Harness;
afterEach(async () => h?.close());

const TOKEN = 'a-very-secret-token-123';
const READ = 'a-read-only-token-456';
const withReadToken = (extra: { server?: string; machines?: string; images?: string } = {}) =>
  baseYaml({ ...extra, server: `  api:\n    readToken: ${READ}\n${extra.server ?? ''}` });
const post = (url: string, payload: unknown, headers: Record<string, string> = {}) =>
  h.app.inject({ method: 'POST', url, payload: payload as string, headers: { 'content-type': 'application/json', ...headers } });
const get = (url: string) => h.app.inject({ url, headers: { authorization: `Bearer ${READ}` } });
/** The event token the per-machine script hands /init (netboot.token=). */
const tokenFrom = (script: string) => ({ authorization: `Bearer ${/netboot\.token=(\S+)/.exec(script)![1]}` });

describe('boot events API', () => {
  it('a sequence of events from /init builds the expected timeline and state', async () => {
    h = await harness(withReadToken());
    const image = addImage(h.store, 'demo');
    const auth = tokenFrom((await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body);
    await h.app.inject(`/images/${image.id}/vmlinuz?mac=${MAC_HYP}`);
    await h.app.inject(`/images/${image.id}/initrd.img?mac=${MAC_HYP}`);
    for (const [phase, t] of [['init', 3], ['net', 3.5], ['layer', 4], ['rootfs', 6], ['switch_root', 6.2]] as const) {
      const res = await post(`/api/machines/${MAC_HYP}/events`, { phase, t }, auth);
      expect(res.statusCode).toBe(202);
    }
    expect((await get(`/api/machines/${MAC_HYP}`)).json().state).toBe('booting');
    expect((await post(`/api/machines/${MAC}/events`, { phase: 'up', t: 9, detail: 'multi-user.target' }, auth)).statusCode).toBe(202);

    const one = (await get(`/api/machines/${MAC_HYP}`)).json();
    expect(one).toMatchObject({ mac: MAC, hostname: 'demo1', known: true, image: 'demo', imageId: image.id, state: 'up' });
    expect(one.lastBoot.phases.map((p: { phase: string; source: string }) => `${p.source}:${p.phase}`)).toEqual([
      'http:script', 'http:kernel', 'http:initrd', 'init:init', 'init:net', 'init:layer', 'init:rootfs', 'init:switch_root', 'init:up',
    ]);
    expect(one.lastBoot.phases[1].bytes).toBe(image.files.vmlinuz!.length);
    expect(one.boots).toHaveLength(1);
    expect(one.security).toEqual([]);

    const all = (await get('/api/machines')).json().machines;
    expect(all.map((m: { mac: string; state: string }) => [m.mac, m.state])).toEqual([[MAC, 'up']]);
  });

  it('disk events from /init land on the timeline with their bytes and are counted in /metrics', async () => {
    h = await harness(withReadToken());
    addImage(h.store, 'demo');
    const auth = tokenFrom((await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body);
    const hit = { phase: 'disk', t: 4.2, detail: 'cache_hit: 0123456789abcdef, 5000 bytes read from disk instead of the network', bytes: 5000 };
    expect((await post(`/api/machines/${MAC_HYP}/events`, hit, auth)).statusCode).toBe(202);
    expect((await post(`/api/machines/${MAC_HYP}/events`, { phase: 'disk', t: 4.3, detail: 'keep: /home' }, auth)).statusCode).toBe(202);
    const phases = (await get(`/api/machines/${MAC_HYP}`)).json().lastBoot.phases.filter((p: { phase: string }) => p.phase === 'disk');
    expect(phases).toEqual([expect.objectContaining({ source: 'init', detail: hit.detail, bytes: 5000 }), expect.objectContaining({ detail: 'keep: /home' })]);
    const metrics = (await h.app.inject('/metrics')).body;
    expect(metrics).toMatch(/^netboot_disk_events_total\{outcome="cache_hit"\} 1$/m);
    expect(metrics).toMatch(/^netboot_disk_events_total\{outcome="keep"\} 1$/m);
    expect(metrics).toMatch(/^netboot_disk_cache_saved_bytes_total 5000$/m);
  });

  it('unseen machines are "never"; unknown-and-unseen MACs are 404', async () => {
    h = await harness(withReadToken({ machines: '  52:54:00:00:00:02:\n    hostname: idle' }));
    const all = (await get('/api/machines')).json().machines;
    expect(all.map((m: { hostname: string; state: string }) => [m.hostname, m.state])).toEqual([['idle', 'never'], ['demo1', 'never']]);
    expect((await get('/api/machines/52-54-00-99-99-99')).statusCode).toBe(404);
    expect((await get('/api/machines/bogus')).statusCode).toBe(400);
  });

  it('malformed events (with a valid token) get 400 and change nothing', async () => {
    h = await harness();
    addImage(h.store, 'demo');
    const auth = tokenFrom((await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body);
    const bad: [unknown, string?][] = [
      [{ phase: 'bogus', t: 1 }],
      [{ phase: 'up' }],
      [{ phase: 'up', t: -1 }],
      [{ phase: 'up', t: 'soon' }],
      [{ phase: 'up', t: 1, extra: true }],
      [{ phase: 'up', t: 1, detail: 'x'.repeat(5000) }],
      ['{"phase": "up", "t":', 'truncated JSON'],
      [[1, 2, 3]],
      ['null'],
    ];
    for (const [body] of bad) {
      const res = await post(`/api/machines/${MAC_HYP}/events`, body, auth);
      expect(res.statusCode, JSON.stringify(body)).toBe(400);
    }
    expect((await h.app.inject({ method: 'POST', url: `/api/machines/${MAC_HYP}/events`, payload: 'phase=up', headers: { 'content-type': 'text/plain', ...auth } })).statusCode).toBe(400);
    expect((await post('/api/machines/zz/events', { phase: 'up', t: 1 }, auth)).statusCode).toBe(400);
    expect((await post(`/api/machines/${MAC_HYP}/events`, { phase: 'up', t: 1, detail: 'y'.repeat(20_000) }, auth)).statusCode).toBe(413);
    expect(h.timeline.state(MAC)).toBe('booting');
    expect(h.timeline.current(MAC)!.phases.map((p) => p.phase)).toEqual(['script']);
    expect((await h.app.inject('/healthz')).json()).toEqual({ ok: true });
  });
});

describe('images API and rebuild', () => {
  it('lists configured images with current id, digest, sizes, state', async () => {
    h = await harness(withReadToken({ images: '  other:\n    source: docker:other:1' }));
    const image = addImage(h.store, 'demo');
    const body = (await get('/api/images')).json();
    expect(body.images).toEqual([
      expect.objectContaining({ name: 'demo', currentId: image.id, state: 'ready', digest: `sha256:${'ab'.repeat(32)}` }),
      expect.objectContaining({ name: 'other', currentId: null, state: 'not-built' }),
    ]);
    expect(body.images[0].artifacts.vmlinuz.size).toBe(image.files.vmlinuz!.length);
    expect(body.builds.map((b: { id: string }) => b.id)).toEqual([image.id]);
    expect(body.builds[0].nbdClients).toBe(0);
  });

  it('counts the NBD clients reading each built id (netboot gc keeps those)', async () => {
    h = await harness(withReadToken(), {}, { nbdClients: (id: string) => (id.length > 0 ? 2 : 0) });
    const image = addImage(h.store, 'demo');
    const body = (await get('/api/images')).json();
    expect(body.builds).toEqual([expect.objectContaining({ id: image.id, nbdClients: 2 })]);
  });

  it('rebuild: 404 when no token is configured', async () => {
    const calls: string[] = [];
    h = await harness(baseYaml(), {}, { rebuild: (name: string) => calls.push(name) });
    expect((await post('/api/images/demo/rebuild', {}, { authorization: `Bearer ${TOKEN}` })).statusCode).toBe(404);
    expect(calls).toEqual([]);
  });

  it('rebuild: 401 without a token, 403 with a wrong one, 202 and a call with the right one', async () => {
    const calls: string[] = [];
    h = await harness(baseYaml({ server: `  apiToken: ${TOKEN}` }), {}, { rebuild: (name: string) => calls.push(name) });
    expect((await post('/api/images/demo/rebuild', {})).statusCode).toBe(401);
    expect((await post('/api/images/demo/rebuild', {}, { authorization: 'Bearer wrong-token-wrong-token' })).statusCode).toBe(403);
    expect((await post('/api/images/nope/rebuild', {}, { authorization: `Bearer ${TOKEN}` })).statusCode).toBe(404);
    expect(calls).toEqual([]);
    const ok = await post('/api/images/demo/rebuild', {}, { authorization: `Bearer ${TOKEN}` });
    expect(ok.statusCode).toBe(202);
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls).toEqual(['demo']);
  });
});

describe('/metrics', () => {
  it('parses strictly and carries boots, phases, durations, bytes, DHCP/TFTP and build metrics', async () => {
    h = await harness();
    const image = addImage(h.store, 'demo');
    const auth = tokenFrom((await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body);
    await h.app.inject(`/images/${image.id}/vmlinuz?mac=${MAC_HYP}`);
    await post(`/api/machines/${MAC_HYP}/events`, { phase: 'init', t: 2 }, auth);
    await post(`/api/machines/${MAC_HYP}/events`, { phase: 'failed', t: 4, detail: 'no "rootfs"\nline two' }, auth);
    h.metrics.dhcpPacket('DISCOVER', 'in');
    h.metrics.dhcpPacket('OFFER', 'out');
    h.metrics.tftpTransfer('complete', 174_000);
    h.metrics.imageBuilt('demo', 42, 'ok');

    const res = await h.app.inject('/metrics');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0.0.4/);
    const families = parsePrometheusText(res.body);
    expect(families.get('netboot_boots_total')?.type).toBe('counter');
    expect(families.get('netboot_phase_duration_seconds')?.type).toBe('histogram');
    expect(sampleValue(families, 'netboot_boots_total', { outcome: 'started' })).toBe(1);
    expect(sampleValue(families, 'netboot_boots_total', { outcome: 'failed' })).toBe(1);
    expect(sampleValue(families, 'netboot_boot_phases_total', { phase: 'script', source: 'http' })).toBe(1);
    expect(sampleValue(families, 'netboot_boot_phases_total', { phase: 'failed', source: 'init' })).toBe(1);
    expect(sampleValue(families, 'netboot_phase_duration_seconds_count', { phase: 'failed' })).toBe(1);
    expect(sampleValue(families, 'netboot_phase_duration_seconds_sum', { phase: 'failed' })).toBe(2);
    expect(sampleValue(families, 'netboot_http_bytes_total', { artifact: 'vmlinuz' })).toBe(image.files.vmlinuz!.length);
    expect(sampleValue(families, 'netboot_dhcp_packets_total', { type: 'OFFER', direction: 'out' })).toBe(1);
    expect(sampleValue(families, 'netboot_tftp_bytes_total')).toBe(174_000);
    expect(sampleValue(families, 'netboot_image_build_seconds_count', { image: 'demo', outcome: 'ok' })).toBe(1);
    expect(() => parsePrometheusText('netboot_x 1\n')).toThrow(/without a TYPE/);
    expect(() => parsePrometheusText('# TYPE a counter\na{l="x} 1\n')).toThrow(/bad/);
  });
});
