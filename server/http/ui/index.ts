import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../../config/types.ts';
import { normalizeMac } from '../../config/mac.ts';
import { readMachineTree } from '../../layers/tree.ts';
import { hostApiToken } from '../../layers/signing.ts';
import type { HttpContext } from '../context.ts';
import { allow, sameOrigin, sessionCookie, UiAccess, type Viewer } from './access.ts';
import { addMachineToFile, ConfigEditError } from './config-edit.ts';
import { bytes, page, type PageChrome } from './html.ts';
import { LiveHub, type LiveOptions, type Topic } from './live.ts';
import { effectiveConfig, fleetMacs, fleetRow, inbox, type CurrentIds, type FleetRow } from './model.ts';
import { fleetBody, fleetRowHtml, imageActions, imagesLive, inboxBody, loginBody, machineLive, machineStatic, type ImageView, type LayerListing } from './views.ts';

export interface UiOptions {
  live?: Partial<LiveOptions>;
  /** A boot with no new record for this long is shown as stuck. Default 10 minutes. */
  stuckAfterMs?: number;
}

const ASSETS = join(dirname(fileURLToPath(import.meta.url)), 'assets');
const MAC_PATTERN = '^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$';

/**
 * The status page: the fleet, one machine's boots, the images and the inbox of unknown MACs,
 * server-rendered, with one small script that follows a Server-Sent Events stream. Access as in
 * the API (see access.ts); every mutation is a same-origin form with a CSRF token.
 */
export async function registerUiRoutes(root: FastifyInstance, ctx: HttpContext, options: UiOptions = {}): Promise<void> {
  const access = new UiAccess(ctx.layers.installKey, hostApiToken(ctx.layers.installKey), ctx.now);
  const assets = {
    'app.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(join(ASSETS, 'app.js')) },
    'style.css': { type: 'text/css; charset=utf-8', body: readFileSync(join(ASSETS, 'style.css')) },
  };
  const stuckAfterMs = options.stuckAfterMs ?? 10 * 60_000;

  const currentIds = async (config: Config): Promise<CurrentIds> =>
    new Map(await Promise.all([...config.images.keys()].map(async (name) => [name, await ctx.artifacts.currentId(name)] as const)));
  const rowsFor = async (config: Config, macs: string[]): Promise<FleetRow[]> => {
    const ids = await currentIds(config);
    const now = ctx.now();
    return macs.map((mac) => fleetRow(config, ctx.timeline, ids, mac, { stuckAfterMs, now }));
  };
  const fleetRows = async (config: Config) => {
    const rows = await rowsFor(config, fleetMacs(config, ctx.timeline));
    return rows.sort((a, b) => (a.hostname ?? `~${a.mac}`).localeCompare(b.hostname ?? `~${b.mac}`));
  };
  const inboxEntries = (config: Config) =>
    inbox(config, ctx.timeline, (mac) => {
      // Architecture and vendor class of its last DHCP packet (the DHCP server feeds the same object).
      const info = ctx.identity.sightings.info(mac);
      const ageMs = ctx.identity.sightings.ageMs(mac);
      return { ...(ageMs !== undefined ? { ageMs } : {}), ...(info ? { info } : {}) };
    });
  const machineLiveHtml = async (config: Config, mac: string) => {
    const [row] = await rowsFor(config, [mac]);
    return machineLive(mac, row!, ctx.timeline.boots(mac), ctx.timeline.securityEvents(mac));
  };
  const imageViews = async (config: Config): Promise<ImageView[]> => {
    const builds = await ctx.artifacts.list();
    const ids = await currentIds(config);
    const byId = new Map<string, string[]>();
    for (const mac of fleetMacs(config, ctx.timeline)) {
      const boot = ctx.timeline.current(mac);
      if (!boot?.imageId || boot.state === 'failed') continue;
      const name = config.machines.get(mac)?.hostname;
      byId.set(boot.imageId, [...(byId.get(boot.imageId) ?? []), name ? `${mac} (${name})` : mac]);
    }
    return [...config.images.values()].map((image) => {
      const currentId = ids.get(image.name) ?? null;
      const building = ctx.artifacts.buildState?.(image.name) ?? 'idle';
      return {
        name: image.name,
        source: image.source,
        root: image.root,
        currentId,
        state: building === 'building' ? 'building' : building === 'failed' ? 'failed' : currentId ? 'ready' : 'not-built',
        error: building === 'failed' ? (ctx.artifacts.buildError?.(image.name) ?? 'the last build failed (see the server log)') : null,
        progress: building === 'building' ? progressText(ctx.artifacts.buildProgress?.(image.name)) : null,
        builds: builds
          .filter((b) => b.name === image.name || b.id === currentId)
          .sort((a, b) => (b.builtAt ?? '').localeCompare(a.builtAt ?? ''))
          .map((b) => ({ id: b.id, builtAt: b.builtAt ?? null, current: b.id === currentId, machines: byId.get(b.id) ?? [], nbdClients: ctx.nbdClients?.(b.id) ?? 0 })),
      };
    });
  };

  const hub = new LiveHub(
    ctx.timeline,
    {
      rows: async (macs) => {
        const config = ctx.getConfig();
        return (await rowsFor(config, macs)).map((row) => ({ mac: row.mac, html: fleetRowHtml(row), attention: row.attention, state: row.state }));
      },
      machine: (mac) => machineLiveHtml(ctx.getConfig(), mac),
      images: async () => {
        const html = imagesLive(await imageViews(ctx.getConfig()));
        return { html, key: html };
      },
    },
    options.live,
    () => ctx.timeline.macs().filter((mac) => ctx.timeline.state(mac) === 'booting'),
  );
  root.addHook('onClose', async () => hub.close());
  root.decorate('statusPage', { hub });

  await root.register(async (app) => {
    app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 16 * 1024 }, (_request, body, done) => {
      done(null, Object.fromEntries(new URLSearchParams(body as string)));
    });

    const viewerOf = (request: FastifyRequest) => access.viewer(ctx.getConfig(), request);
    const chrome = (viewer: Viewer, config: Config, rest: Omit<PageChrome, 'role' | 'csrf'>): PageChrome => ({
      ...rest,
      role: viewer.role,
      csrf: viewer.session ? access.csrf(viewer.session) : null,
      inboxCount: inboxEntries(config).length,
    });
    const html = (reply: FastifyReply, body: string) => reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').header('content-security-policy', "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'").header('x-frame-options', 'DENY').send(body);
    /** The gate of every mutation: admin, same origin, and the CSRF token of a cookie session. */
    const mutation = (request: FastifyRequest, reply: FastifyReply): Viewer | null => {
      const viewer = viewerOf(request);
      if (!sameOrigin(request)) {
        request.note.warning = 'status page: cross-site form refused';
        void reply.code(403).type('text/plain').send('refused: this form was sent from another site');
        return null;
      }
      if (!allow(viewer, 'admin', ctx.getConfig(), reply, false)) {
        request.note.warning = 'status page: mutation without the admin role';
        return null;
      }
      if (!access.checkCsrf(viewer, (request.body as { _csrf?: unknown } | undefined)?._csrf)) {
        request.note.warning = 'status page: missing or wrong CSRF token';
        void reply.code(403).type('text/plain').send('refused: missing or wrong CSRF token (reload the page and try again)');
        return null;
      }
      return viewer;
    };

    for (const [name, asset] of Object.entries(assets)) {
      app.get(`/ui/${name}`, async (_request, reply) => reply.type(asset.type).header('cache-control', 'no-cache').send(asset.body));
    }

    app.get('/login', async (_request, reply) => {
      const config = ctx.getConfig();
      const closed = access.tokens(config).admin.length === 0 && config.server.api.readToken === undefined && !config.server.api.public;
      return html(reply, page({ title: 'Log in', nav: 'login', role: null, csrf: null }, loginBody(null, closed)));
    });

    app.post<{ Body: { token: string } }>(
      '/login',
      { schema: { body: { type: 'object', required: ['token'], properties: { token: { type: 'string', minLength: 1, maxLength: 512 } } } } },
      async (request, reply) => {
        if (!sameOrigin(request)) return reply.code(403).type('text/plain').send('refused: this form was sent from another site');
        const role = access.roleOf(ctx.getConfig(), request.body.token);
        if (!role) {
          request.note.warning = 'status page: login with a wrong token';
          return html(reply.code(401), page({ title: 'Log in', nav: 'login', role: null, csrf: null }, loginBody('That token is not a read or admin token of this server.', false)));
        }
        return reply.code(303).header('set-cookie', sessionCookie(access.session(role, request.body.token))).header('location', '/').send();
      },
    );

    app.post('/logout', async (request, reply) => {
      const viewer = viewerOf(request);
      if (!sameOrigin(request) || !access.checkCsrf(viewer, (request.body as { _csrf?: unknown } | undefined)?._csrf)) {
        return reply.code(403).type('text/plain').send('refused: missing or wrong CSRF token');
      }
      return reply.code(303).header('set-cookie', sessionCookie('', 0)).header('location', '/login').send();
    });

    app.get('/', async (request, reply) => {
      const viewer = viewerOf(request);
      const config = ctx.getConfig();
      if (!allow(viewer, 'read', config, reply, true)) return reply;
      return html(reply, page(chrome(viewer, config, { title: 'Fleet', nav: 'fleet', live: '/ui/events?topic=fleet' }), fleetBody(await fleetRows(config))));
    });

    app.get<{ Params: { mac: string } }>(
      '/machines/:mac',
      { schema: { params: { type: 'object', required: ['mac'], properties: { mac: { type: 'string', pattern: MAC_PATTERN } } } } },
      async (request, reply) => {
        const viewer = viewerOf(request);
        const config = ctx.getConfig();
        if (!allow(viewer, 'read', config, reply, true)) return reply;
        const mac = normalizeMac(request.params.mac)!;
        if (!config.machines.has(mac) && !ctx.timeline.has(mac)) return reply.code(404).type('text/plain').send(`${mac} is not configured and was never seen`);
        const machine = config.machines.get(mac);
        let layer: LayerListing | null = null;
        if (machine?.folder) {
          try {
            const files = await readMachineTree(machine.folder);
            layer = { files: files.slice(0, 500).map((f) => ({ path: f.path, type: f.type, mode: f.mode, size: f.content?.length ?? null })), truncated: files.length > 500, error: null };
          } catch (err) {
            layer = { files: [], truncated: false, error: (err as Error).message };
          }
        }
        const title = machine?.hostname ?? mac;
        const body = `<h1>${title === mac ? mac : `${machine!.hostname} <code>${mac}</code>`}</h1><div id="live">${await machineLiveHtml(config, mac)}</div>${machineStatic(effectiveConfig(config, mac), layer)}`;
        return html(reply, page(chrome(viewer, config, { title, nav: 'machine', live: `/ui/events?topic=machine&mac=${mac}` }), body));
      },
    );

    app.get('/images', async (request, reply) => {
      const viewer = viewerOf(request);
      const config = ctx.getConfig();
      if (!allow(viewer, 'read', config, reply, true)) return reply;
      const csrf = viewer.session ? access.csrf(viewer.session) : null;
      const images = await imageViews(config);
      const body = `<h1>Images</h1>${viewer.role === 'admin' ? imageActions(images, csrf) : ''}<div id="live">${imagesLive(images)}</div>`;
      return html(reply, page(chrome(viewer, config, { title: 'Images', nav: 'images', live: '/ui/events?topic=images' }), body));
    });

    app.post<{ Params: { name: string } }>(
      '/images/:name/rebuild',
      { schema: { params: { type: 'object', required: ['name'], properties: { name: { type: 'string', maxLength: 128 } } } } },
      async (request, reply) => {
        if (!mutation(request, reply)) return reply;
        const image = ctx.getConfig().images.get(request.params.name);
        if (!image) return reply.code(404).type('text/plain').send(`no image named ${request.params.name} in the config`);
        if (!ctx.rebuild) return reply.code(501).type('text/plain').send('rebuilding is not available in this server');
        Promise.resolve()
          .then(() => ctx.rebuild!(image.name))
          .catch((err: Error) => ctx.log.error({ phase: 'build', image: image.name, err: err.message }, 'rebuild failed'));
        return reply.code(303).header('location', '/images').send();
      },
    );

    /** The inbox page; `notice` is only ever text this server wrote (never echoed from a URL). */
    const inboxPage = (request: FastifyRequest, reply: FastifyReply, notice: string | null) => {
      const viewer = viewerOf(request);
      const config = ctx.getConfig();
      if (!allow(viewer, 'read', config, reply, true)) return reply;
      const csrf = viewer.session ? access.csrf(viewer.session) : null;
      const body = inboxBody(inboxEntries(config), [...config.images.keys()], config.defaults.image, viewer.role === 'admin', csrf, notice);
      return html(reply, page(chrome(viewer, config, { title: 'Inbox', nav: 'inbox' }), body));
    };

    app.get<{ Querystring: { added?: string } }>(
      '/inbox',
      { schema: { querystring: { type: 'object', properties: { added: { type: 'string', maxLength: 64 } } } } },
      async (request, reply) => {
        // Only a MAC is shown back from the URL: a crafted link cannot put words on an admin's page.
        const added = request.query.added ? normalizeMac(request.query.added) : null;
        return inboxPage(request, reply, added ? `${added} was written into ${ctx.getConfig().file}; the server picks it up on its reload.` : null);
      },
    );

    app.post<{ Body: { mac: string; hostname: string; image: string; _csrf?: string } }>(
      '/inbox/add',
      {
        schema: {
          body: {
            type: 'object',
            required: ['mac', 'hostname', 'image'],
            properties: {
              mac: { type: 'string', pattern: MAC_PATTERN },
              hostname: { type: 'string', pattern: '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$' },
              image: { type: 'string', maxLength: 128 },
              _csrf: { type: 'string', maxLength: 128 },
            },
          },
        },
      },
      async (request, reply) => {
        if (!mutation(request, reply)) return reply;
        const config = ctx.getConfig();
        const { mac, hostname, image } = request.body;
        if (!config.images.has(image)) return reply.code(400).type('text/plain').send(`no image named ${image} in the config`);
        try {
          await addMachineToFile(config.file, { mac, hostname, image });
        } catch (err) {
          if (!(err instanceof ConfigEditError)) throw err;
          request.note.warning = `status page: add refused: ${err.message}`;
          return inboxPage(request, reply.code(409), `Not added: ${err.message.slice(0, 500)}`);
        }
        ctx.log.info({ phase: 'config', mac: normalizeMac(mac), hostname, image, file: config.file }, 'status page: machine added to the config');
        return reply.code(303).header('location', `/inbox?added=${encodeURIComponent(normalizeMac(mac)!)}`).send();
      },
    );

    app.get<{ Querystring: { topic: 'fleet' | 'machine' | 'images'; mac?: string } }>(
      '/ui/events',
      {
        schema: {
          querystring: {
            type: 'object',
            required: ['topic'],
            properties: { topic: { type: 'string', enum: ['fleet', 'machine', 'images'] }, mac: { type: 'string', pattern: MAC_PATTERN } },
          },
        },
      },
      async (request, reply) => {
        const viewer = viewerOf(request);
        if (!allow(viewer, 'read', ctx.getConfig(), reply, false)) return reply;
        const { topic, mac } = request.query;
        let follow: Topic;
        if (topic === 'machine') {
          if (!mac) return reply.code(400).send({ error: 'topic=machine needs mac=' });
          follow = { kind: 'machine', mac: normalizeMac(mac)! };
        } else follow = { kind: topic };
        if (hub.size >= hub.options.maxClients) {
          request.note.warning = 'status page: live stream refused, too many open';
          return reply.code(503).header('retry-after', '30').send({ error: `too many live streams open (${hub.options.maxClients})` });
        }
        reply.hijack();
        hub.open(reply.raw, follow, () => viewerOf(request).role !== null);
        return reply;
      },
    );
  });
}

/** "pull 120.0 MiB / 300.0 MiB · 12.0 MiB/s · ETA 0:15", as the terminal shows it. */
export function progressText(p: { phase: string; bytes: number; totalBytes?: number; rate?: number } | undefined): string | null {
  if (!p) return null;
  const parts = [`${p.phase} ${bytes(p.bytes)}${p.totalBytes ? ` / ${bytes(p.totalBytes)}` : ''}`];
  if (p.rate) parts.push(`${bytes(p.rate)}/s`);
  if (p.rate && p.totalBytes && p.bytes < p.totalBytes) {
    const seconds = Math.round((p.totalBytes - p.bytes) / p.rate);
    parts.push(`ETA ${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`);
  }
  return parts.join(' · ');
}

declare module 'fastify' {
  interface FastifyInstance {
    statusPage?: { hub: LiveHub };
  }
}

declare module '../context.ts' {
  interface HttpDeps {
    /** Status page options (tests, bench; the DHCP sightings of netboot.ts). */
    ui?: UiOptions;
  }
}
