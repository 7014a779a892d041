import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config/types.ts';
import { normalizeMac } from '../config/mac.ts';
import { initEventSchema, type Boot } from '../events/timeline.ts';
import type { HttpContext } from './context.ts';

export interface MachineSummary {
  mac: string;
  hostname: string | null;
  known: boolean;
  image: string | null;
  imageId: string | null;
  state: 'booting' | 'up' | 'failed' | 'never';
  lastBoot: Boot | null;
}

export function registerApiRoutes(app: FastifyInstance, ctx: HttpContext): void {
  const summarise = async (config: Config, mac: string): Promise<MachineSummary> => {
    const machine = config.machines.get(mac);
    const lastBoot = ctx.timeline.current(mac) ?? null;
    const image = machine?.image ?? null;
    return {
      mac,
      hostname: machine?.hostname ?? null,
      known: machine !== undefined,
      image,
      imageId: lastBoot?.imageId ?? (image ? await ctx.artifacts.currentId(image) : null),
      state: ctx.timeline.state(mac),
      lastBoot,
    };
  };

  app.get('/api/machines', async () => {
    const config = ctx.getConfig();
    const macs = new Set([...config.machines.keys(), ...ctx.timeline.macs()]);
    return { machines: await Promise.all([...macs].sort().map((mac) => summarise(config, mac))) };
  });

  app.get<{ Params: { mac: string } }>('/api/machines/:mac', async (request, reply) => {
    const mac = normalizeMac(request.params.mac);
    if (!mac) return reply.code(400).send({ error: `"${request.params.mac}" is not a MAC address` });
    request.note.mac = mac;
    const config = ctx.getConfig();
    if (!config.machines.has(mac) && ctx.timeline.boots(mac).length === 0) return reply.code(404).send({ error: `${mac} is not configured and was never seen` });
    return { ...(await summarise(config, mac)), boots: ctx.timeline.boots(mac) };
  });

  app.post<{ Params: { mac: string } }>('/api/machines/:mac/events', { bodyLimit: 16 * 1024 }, async (request, reply) => {
    const mac = normalizeMac(request.params.mac);
    if (!mac) return reply.code(400).send({ error: `"${request.params.mac}" is not a MAC address` });
    request.note.mac = mac;
    const parsed = initEventSchema.safeParse(request.body);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
      request.note.warning = `rejected event: ${problems}`;
      return reply.code(400).send({ error: problems });
    }
    const event = parsed.data;
    request.note.phase = event.phase;
    const boot = ctx.timeline.record(mac, event.phase, {
      source: 'init',
      t: event.t,
      ...(event.detail !== undefined ? { detail: event.detail } : {}),
      ...(event.bytes !== undefined ? { bytes: event.bytes } : {}),
      ...(event.durationMs !== undefined ? { durationMs: event.durationMs } : {}),
    });
    if (event.phase === 'failed') request.note.warning = `boot failed: ${event.detail ?? 'no detail'}`;
    return reply.code(202).send({ boot: boot.id, state: boot.state });
  });

  app.get('/api/images', async () => {
    const config = ctx.getConfig();
    const builds = await ctx.artifacts.list();
    const images = await Promise.all(
      [...config.images.values()].map(async (image) => {
        const currentId = await ctx.artifacts.currentId(image.name);
        const manifest = currentId ? await ctx.artifacts.manifest(currentId) : null;
        const building = ctx.artifacts.buildState?.(image.name) ?? 'idle';
        return {
          name: image.name,
          source: image.source,
          root: image.root,
          initramfs: image.initramfs,
          currentId,
          state: building === 'building' ? 'building' : manifest ? 'ready' : building === 'failed' ? 'failed' : 'not-built',
          digest: manifest?.digest ?? null,
          builtAt: manifest?.builtAt ?? null,
          artifacts: manifest?.artifacts ?? {},
        };
      }),
    );
    return {
      images,
      builds: builds.map((b) => ({
        id: b.id,
        name: b.name ?? null,
        digest: b.digest ?? null,
        builtAt: b.builtAt ?? null,
        artifacts: b.artifacts,
        nbdClients: ctx.nbdClients?.(b.id) ?? 0,
      })),
    };
  });

  app.post<{ Params: { name: string } }>('/api/images/:name/rebuild', async (request, reply) => {
    const config = ctx.getConfig();
    const denied = checkToken(config.server.apiToken, request, reply);
    if (denied) return denied;
    const image = config.images.get(request.params.name);
    if (!image) return reply.code(404).send({ error: `no image named ${request.params.name} in the config` });
    if (!ctx.rebuild) return reply.code(501).send({ error: 'rebuilding is not available in this server' });
    Promise.resolve()
      .then(() => ctx.rebuild!(image.name))
      .catch((err: Error) => ctx.log.error({ phase: 'build', image: image.name, err: err.message }, 'rebuild failed'));
    return reply.code(202).send({ accepted: true, image: image.name });
  });
}

/** Mutating endpoints: disabled without a configured token (404), 401 without a bearer token, 403 with a wrong one. */
function checkToken(token: string | undefined, request: FastifyRequest, reply: FastifyReply): FastifyReply | null {
  if (!token) return reply.code(404).send({ error: 'mutating API endpoints are disabled: set server.apiToken in the config' });
  const header = request.headers.authorization;
  const match = header ? /^Bearer\s+(\S+)$/i.exec(header) : null;
  if (!match) return reply.code(401).header('WWW-Authenticate', 'Bearer').send({ error: 'missing bearer token' });
  const given = Buffer.from(match[1]!);
  const expected = Buffer.from(token);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    request.note.warning = 'API call with a wrong token';
    return reply.code(403).send({ error: 'wrong token' });
  }
  return null;
}
