import { afterEach, describe, expect, it } from 'vitest';
import { DhcpSightings } from '../../server/boot/dhcp-sightings.ts';
import { addImage } from '../http/fixtures.ts';
import { baseYaml, harness, MAC, MAC_HYP, type Harness } from '../http/setup.ts';

let h: Harness;
afterEach(async () => h?.close());

const READ = 'ui-read-token-0123456789';
const ADMIN = 'ui-admin-token-0123456789';
const yaml = (api = `    readToken: ${READ}\n    adminToken: ${ADMIN}\n`) => baseYaml({ server: `  api:\n${api}` });
const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

async function login(token: string): Promise<{ cookie: string; csrf: string }> {
  const res = await h.app.inject({ method: 'POST', url: '/login', payload: form({ token }), headers: FORM });
  expect(res.statusCode).toBe(303);
  const setCookie = String(res.headers['set-cookie']);
  expect(setCookie).toMatch(/HttpOnly/);
  expect(setCookie).toMatch(/SameSite=Strict/);
  const cookie = setCookie.split(';')[0]!;
  const page = await h.app.inject({ url: '/inbox', headers: { cookie } });
  expect(page.statusCode).toBe(200);
  return { cookie, csrf: /name="_csrf" value="([0-9a-f]{64})"/.exec(page.body)![1]! };
}

describe('status page access', () => {
  it('without a token nothing is readable: pages redirect to /login, streams and assets carry no data', async () => {
    h = await harness(yaml());
    h.timeline.record(MAC, 'script', { source: 'http', detail: 'image demo' });
    for (const url of ['/', `/machines/${MAC_HYP}`, '/images', '/inbox']) {
      const res = await h.app.inject(url);
      expect(res.statusCode, url).toBe(303);
      expect(res.headers.location).toBe('/login');
      expect(res.body).not.toContain('demo1');
    }
    expect((await h.app.inject('/ui/events?topic=fleet')).statusCode).toBe(401);
    expect((await h.app.inject({ url: '/', headers: { authorization: 'Bearer wrong-token-000000000' } })).statusCode).toBe(403);
    const login = await h.app.inject('/login');
    expect(login.statusCode).toBe(200);
    expect(login.body).not.toContain(MAC);
    const wrong = await h.app.inject({ method: 'POST', url: '/login', payload: form({ token: 'not-a-token-000000' }), headers: FORM });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.headers['set-cookie']).toBeUndefined();
    // A forged cookie is nobody.
    expect((await h.app.inject({ url: '/', headers: { cookie: `netboot_session=admin.99999999999.${'0'.repeat(16)}.${'0'.repeat(64)}` } })).statusCode).toBe(303);
  });

  it('a read session reads everything but cannot add or rebuild, even with its CSRF token', async () => {
    const dhcpSightings = new DhcpSightings();
    h = await harness(yaml(), {}, { dhcpSightings });
    addImage(h.store, 'demo');
    dhcpSightings.note('52:54:00:aa:bb:cc', { arch: 7, vendorClass: 'PXEClient:Arch:00007:UNDI:003016' });
    h.timeline.record('52:54:00:aa:bb:cc', 'dhcp', { source: 'dhcp', detail: 'DISCOVER -> OFFER 10.88.60.9 undionly.kpxe' });
    const { cookie, csrf } = await login(READ);
    const fleet = await h.app.inject({ url: '/', headers: { cookie } });
    expect(fleet.statusCode).toBe(200);
    expect(fleet.body).toContain('demo1');
    expect(fleet.body).toContain('52:54:00:aa:bb:cc');
    const inbox = await h.app.inject({ url: '/inbox', headers: { cookie } });
    expect(inbox.body).toContain('10.88.60.9');
    expect(inbox.body).toContain('x86-64 UEFI');
    expect(inbox.body).toContain('PXEClient:Arch:00007:UNDI:003016');
    expect(inbox.body).not.toContain('action="/inbox/add"');
    const add = await h.app.inject({ method: 'POST', url: '/inbox/add', payload: form({ mac: '52:54:00:aa:bb:cc', hostname: 'x1', image: 'demo', _csrf: csrf }), headers: { ...FORM, cookie } });
    expect(add.statusCode).toBe(403);
    const rebuild = await h.app.inject({ method: 'POST', url: '/images/demo/rebuild', payload: form({ _csrf: csrf }), headers: { ...FORM, cookie } });
    expect(rebuild.statusCode).toBe(403);
    // The read token as a bearer token: the same.
    expect((await h.app.inject({ method: 'POST', url: '/images/demo/rebuild', payload: form({}), headers: { ...FORM, authorization: `Bearer ${READ}` } })).statusCode).toBe(403);
  });

  it('an admin session needs its CSRF token and the same origin for every mutation; bearer admin needs neither', async () => {
    const rebuilt: string[] = [];
    h = await harness(yaml(), {}, { rebuild: (name) => rebuilt.push(name) });
    const { cookie, csrf } = await login(ADMIN);
    const post = (fields: Record<string, string>, headers: Record<string, string> = {}) =>
      h.app.inject({ method: 'POST', url: '/images/demo/rebuild', payload: form(fields), headers: { ...FORM, cookie, ...headers } });
    expect((await post({})).statusCode).toBe(403);
    expect((await post({ _csrf: 'f'.repeat(64) })).statusCode).toBe(403);
    expect((await post({ _csrf: csrf }, { origin: 'http://evil.example' })).statusCode).toBe(403);
    expect((await post({ _csrf: csrf }, { 'sec-fetch-site': 'cross-site' })).statusCode).toBe(403);
    expect(rebuilt).toEqual([]);
    const ok = await post({ _csrf: csrf }, { origin: 'http://localhost:80', host: 'localhost:80' });
    expect(ok.statusCode).toBe(303);
    expect(rebuilt).toEqual(['demo']);
    const bearer = await h.app.inject({ method: 'POST', url: '/images/demo/rebuild', payload: form({}), headers: { ...FORM, authorization: `Bearer ${ADMIN}` } });
    expect(bearer.statusCode).toBe(303);
    expect(rebuilt).toEqual(['demo', 'demo']);
    // Another session's CSRF token does not fit this one.
    const other = await login(ADMIN);
    expect(other.csrf).not.toBe(csrf);
    expect((await post({ _csrf: other.csrf })).statusCode).toBe(403);
  });

  it('the inbox never shows words taken from its URL; a refused Add says why on the page itself (409)', async () => {
    h = await harness(yaml());
    const read = { authorization: `Bearer ${READ}` };
    const crafted = await h.app.inject({ url: `/inbox?added=${encodeURIComponent('Your token expired: call 555')}&error=${encodeURIComponent('Send your token to evil')}`, headers: read });
    expect(crafted.statusCode).toBe(200);
    expect(crafted.body).not.toMatch(/555|evil|was written into/);
    const added = await h.app.inject({ url: '/inbox?added=52-54-00-AA-BB-CC', headers: read });
    expect(added.body).toContain('52:54:00:aa:bb:cc was written into');
    // MAC is already in the config: the editor refuses, the page says so, nothing is written.
    const refused = await h.app.inject({ method: 'POST', url: '/inbox/add', payload: form({ mac: MAC, hostname: 'again', image: 'demo' }), headers: { ...FORM, authorization: `Bearer ${ADMIN}` } });
    expect(refused.statusCode).toBe(409);
    expect(refused.body).toContain(`Not added: ${MAC} is already in the config`);
  });

  it('log out needs the CSRF token and clears the cookie', async () => {
    h = await harness(yaml());
    const { cookie, csrf } = await login(READ);
    expect((await h.app.inject({ method: 'POST', url: '/logout', payload: form({}), headers: { ...FORM, cookie } })).statusCode).toBe(403);
    const out = await h.app.inject({ method: 'POST', url: '/logout', payload: form({ _csrf: csrf }), headers: { ...FORM, cookie } });
    expect(out.statusCode).toBe(303);
    expect(String(out.headers['set-cookie'])).toMatch(/^netboot_session=; .*Max-Age=0/);
  });

  it('the machine page lists the machine folder (its top layer) and never shows password hashes', async () => {
    const machines = `  52:54:00:60:50:01:\n    hostname: withfiles\n    users:\n      - name: ops\n        passwordHash: "$6$salt$secrethash"\n`;
    h = await harness(baseYaml({ server: `  api:\n    readToken: ${READ}\n`, machines }), { withfiles: { 'etc/motd': 'hello\n', 'etc/app/config.toml.tmpl': 'x = 1\n' } });
    const page = await h.app.inject({ url: '/machines/52-54-00-60-50-01', headers: { authorization: `Bearer ${READ}` } });
    expect(page.statusCode).toBe(200);
    expect(page.body).toContain('<code>etc/motd</code>');
    expect(page.body).toContain('<code>etc/app/config.toml.tmpl</code>');
    expect(page.body).toContain('ops (password set)');
    expect(page.body).not.toContain('secrethash');
  });

  it('a session ends when its token is changed in the config', async () => {
    h = await harness(yaml());
    const { cookie } = await login(READ);
    expect((await h.app.inject({ url: '/', headers: { cookie } })).statusCode).toBe(200);
    h.setConfig(yaml(`    readToken: ui-another-read-token-999\n    adminToken: ${ADMIN}\n`));
    expect((await h.app.inject({ url: '/', headers: { cookie } })).statusCode).toBe(303);
  });

  it('server.api.public opens reads, not mutations; without an admin token mutations are 404', async () => {
    h = await harness(yaml('    public: true\n'));
    const fleet = await h.app.inject('/');
    expect(fleet.statusCode).toBe(200);
    expect(fleet.body).toContain('demo1');
    expect((await h.app.inject({ method: 'POST', url: '/images/demo/rebuild', payload: form({}), headers: FORM })).statusCode).toBe(404);
  });

  it('bad input gets a 4xx, never a 500', async () => {
    h = await harness(yaml());
    const auth = { authorization: `Bearer ${ADMIN}` };
    expect((await h.app.inject({ url: '/machines/not-a-mac', headers: auth })).statusCode).toBe(400);
    expect((await h.app.inject({ url: '/machines/52-54-00-99-99-99', headers: auth })).statusCode).toBe(404);
    expect((await h.app.inject({ url: '/ui/events?topic=bogus', headers: auth })).statusCode).toBe(400);
    expect((await h.app.inject({ url: '/ui/events?topic=machine', headers: auth })).statusCode).toBe(400);
    const bad = [
      { mac: 'zz', hostname: 'a', image: 'demo' },
      { mac: MAC, hostname: '-bad-', image: 'demo' },
      { mac: '52:54:00:aa:bb:01', hostname: 'ok1', image: 'nope' },
    ];
    for (const fields of bad) {
      const res = await h.app.inject({ method: 'POST', url: '/inbox/add', payload: form(fields), headers: { ...FORM, ...auth } });
      expect(res.statusCode, JSON.stringify(fields)).toBe(400);
    }
    const big = await h.app.inject({ method: 'POST', url: '/login', payload: form({ token: 'x'.repeat(40_000) }), headers: FORM });
    expect(big.statusCode).toBe(413);
    expect((await h.app.inject({ method: 'POST', url: '/login', payload: 'token=%E0%A4%A', headers: FORM })).statusCode).toBeLessThan(500);
  });
});
