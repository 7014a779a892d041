import { afterEach, describe, expect, it } from 'vitest';
import { baseYaml, harness, MAC, type Harness } from '../http/setup.ts';

const READ = 'ui-live-read-token-000001';
let h: Harness;
const streams: AbortController[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.abort();
  await h?.close();
});

/** An SSE client over a real socket: collects events until `until` says stop. */
async function open(base: string, query: string): Promise<{ status: number; next: (until: (events: { event: string; data: string }[]) => boolean) => Promise<{ event: string; data: string }[]> }> {
  const abort = new AbortController();
  streams.push(abort);
  const res = await fetch(`${base}/ui/events?${query}`, { headers: { authorization: `Bearer ${READ}` }, signal: abort.signal });
  const events: { event: string; data: string }[] = [];
  if (res.status !== 200) return { status: res.status, next: async () => events };
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  return {
    status: res.status,
    async next(until) {
      while (!until(events)) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event && data !== undefined) events.push({ event, data });
        }
      }
      return events;
    },
  };
}

async function listen(h: Harness): Promise<string> {
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const address = h.app.server.address();
  return `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
}

describe('status page live stream', () => {
  it('a burst of records becomes one rows event per flush; machine streams get only their MAC', async () => {
    h = await harness(baseYaml({ server: `  api:\n    readToken: ${READ}\n` }), {}, { ui: { live: { flushMs: 100 } } });
    const base = await listen(h);
    const fleet = await open(base, 'topic=fleet');
    const machine = await open(base, `topic=machine&mac=${MAC}`);
    const other = await open(base, 'topic=machine&mac=52:54:00:60:30:09');
    expect([fleet.status, machine.status, other.status]).toEqual([200, 200, 200]);
    for (let i = 0; i < 100; i++) h.timeline.record(MAC, 'tftp', { source: 'tftp', detail: `file ${i}` });
    h.timeline.record('52:54:00:60:30:01', 'dhcp', { source: 'dhcp' });
    const rows = await fleet.next((events) => events.some((e) => e.event === 'rows'));
    const sent = JSON.parse(rows.find((e) => e.event === 'rows')!.data) as { mac: string; html: string; state: string }[];
    expect(sent.map((r) => r.mac).sort()).toEqual([MAC, '52:54:00:60:30:01']);
    expect(sent.find((r) => r.mac === MAC)!.html).toContain('booting · tftp');
    const mine = await machine.next((events) => events.some((e) => e.event === 'machine'));
    expect(JSON.parse(mine.find((e) => e.event === 'machine')!.data).html).toContain('file 99');
    await h.app.statusPage!.hub.settled();
    // The other machine's stream got nothing but its opening; nothing is pending for it.
    h.timeline.record('52:54:00:60:30:09', 'dhcp', { source: 'dhcp' });
    const theirs = await other.next((events) => events.length > 0);
    expect(theirs.map((e) => e.event)).toEqual(['machine']);
  });

  it('streams are capped: one more gets 503 with Retry-After, and a closed one frees its place', async () => {
    h = await harness(baseYaml({ server: `  api:\n    readToken: ${READ}\n` }), {}, { ui: { live: { maxClients: 2 } } });
    const base = await listen(h);
    expect((await open(base, 'topic=fleet')).status).toBe(200);
    expect((await open(base, 'topic=fleet')).status).toBe(200);
    const refused = await fetch(`${base}/ui/events?topic=fleet`, { headers: { authorization: `Bearer ${READ}` } });
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('30');
    const hub = h.app.statusPage!.hub;
    expect(hub.size).toBe(2);
    streams.shift()!.abort();
    while (hub.size > 1) await new Promise((resolve) => setImmediate(resolve));
    expect((await open(base, 'topic=fleet')).status).toBe(200);
  });

  it('a stream ends at its next event once its token is no longer in the config', async () => {
    h = await harness(baseYaml({ server: `  api:\n    readToken: ${READ}\n` }), {}, { ui: { live: { flushMs: 20 } } });
    const base = await listen(h);
    const fleet = await open(base, 'topic=fleet');
    h.timeline.record(MAC, 'script', { source: 'http' });
    expect((await fleet.next((events) => events.length > 0)).map((e) => e.event)).toEqual(['rows']);
    h.setConfig(baseYaml({ server: '  api:\n    readToken: ui-live-another-token-0002\n' }));
    h.timeline.record(MAC, 'kernel', { source: 'http' });
    // next() returns when the server ends the stream, with no new event.
    expect((await fleet.next(() => false)).map((e) => e.event)).toEqual(['rows']);
    expect(h.app.statusPage!.hub.size).toBe(0);
  });
});
