import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config/types.ts';
import { normalizeMac } from '../config/mac.ts';
import { initEventSchema, type Boot, type SecurityEvent } from '../events/timeline.ts';
import { hostApiToken, readHostApiToken, redactSignatures, verifyEventToken } from '../layers/signing.ts';
import type { HttpContext } from './context.ts';

/**
 * Who may call an /api route: `read` (read token, admin token or the host token; anyone when
 * server.api.public), `admin` (the admin token), `event` (/init's events: the per-boot event
 * token of that MAC). Default: `read` for GET/HEAD, `admin` for anything else.
 */
export type ApiAccess = 'read' | 'admin' | 'event';

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: ApiAccess;
  }
}

export interface MachineSummary {
  mac: string;
  hostname: string | null;
  known: boolean;
  image: string | null;
  imageId: string | null;
  state: 'booting' | 'up' | 'failed' | 'never';
  lastBoot: Boot | null;
}

/** /init phases that come only after its layer download (or end the boot): its signed URL is retired then. */
const PAST_THE_LAYER = new Set<string>(['layer', 'switch_root', 'up', 'failed']);

/** Every /api route, behind one access check: an onRequest hook, so a refused body is never even read. */
export function registerApiRoutes(root: FastifyInstance, ctx: HttpContext): void {
  const hostToken = hostApiToken(ctx.layers.installKey);
  const eventBoots = new WeakMap<FastifyRequest, string>();
  void root.register(async (app) => {
    app.addHook('onRequest', async (request, reply) => {
      const access = request.routeOptions.config.access ?? (request.method === 'GET' || request.method === 'HEAD' ? 'read' : 'admin');
      if (access !== 'event') return authorize(ctx.getConfig(), hostToken, access, request, reply) ?? undefined;
      const raw = (request.params as { mac?: string }).mac ?? '';
      const mac = normalizeMac(raw);
      if (!mac) return reply.code(400).send({ error: `"${raw}" is not a MAC address` });
      request.note.mac = mac;
      const boot = checkEventToken(ctx, mac, request, reply);
      if (typeof boot !== 'string') return boot;
      eventBoots.set(request, boot);
      return undefined;
    });
    registerRoutes(app, ctx, (request) => eventBoots.get(request)!);
  });
}

function registerRoutes(app: FastifyInstance, ctx: HttpContext, eventBoot: (request: FastifyRequest) => string): void {
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
    if (!config.machines.has(mac) && !ctx.timeline.has(mac)) return reply.code(404).send({ error: `${mac} is not configured and was never seen` });
    const security: readonly SecurityEvent[] = ctx.timeline.securityEvents(mac);
    return { ...(await summarise(config, mac)), boots: ctx.timeline.boots(mac), security };
  });

  app.post<{ Params: { mac: string } }>('/api/machines/:mac/events', { bodyLimit: 16 * 1024, config: { access: 'event' } }, async (request, reply) => {
    const mac = request.note.mac!;
    const parsed = initEventSchema.safeParse(request.body);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
      request.note.warning = `rejected event: ${problems}`;
      return reply.code(400).send({ error: problems });
    }
    const event = parsed.data;
    request.note.phase = event.phase;
    const bootId = eventBoot(request);
    const kept = ctx.timeline.boots(mac);
    // Checked here, not with the token: newer boots may have replaced it while the body arrived.
    if (kept.length > 0 && !kept.some((b) => b.id === bootId)) {
      request.note.warning = `refused boot event for boot ${bootId}, no longer kept`;
      return reply.code(410).send({ error: `boot ${bootId} of ${mac} is over (newer boots replaced it)` });
    }
    const boot = ctx.timeline.record(mac, event.phase, {
      source: 'init',
      boot: bootId,
      t: event.t,
      ...(event.detail !== undefined ? { detail: event.detail } : {}),
      ...(event.bytes !== undefined ? { bytes: event.bytes } : {}),
      ...(event.durationMs !== undefined ? { durationMs: event.durationMs } : {}),
    });
    // /init is past its layer: the boot's signed URL (in the machine's /proc/cmdline) delivers no more.
    if (PAST_THE_LAYER.has(event.phase)) {
      const unrecorded = await ctx.layers.signer.retire(mac, bootId, ctx.layerTtlSeconds);
      if (unrecorded) ctx.log.error({ mac, phase: event.phase, err: unrecorded.message }, 'layer URL retired, but the used-URL ledger could not be written (until a restart only)');
    }
    // The same redaction as the stored detail: a signed layer URL never reaches the log either.
    if (event.phase === 'failed') request.note.warning = `boot failed: ${redactSignatures(event.detail ?? 'no detail').slice(0, 512)}`;
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
    const image = config.images.get(request.params.name);
    if (!image) return reply.code(404).send({ error: `no image named ${request.params.name} in the config` });
    if (!ctx.rebuild) return reply.code(501).send({ error: 'rebuilding is not available in this server' });
    Promise.resolve()
      .then(() => ctx.rebuild!(image.name))
      .catch((err: Error) => ctx.log.error({ phase: 'build', image: image.name, err: err.message }, 'rebuild failed'));
    return reply.code(202).send({ accepted: true, image: image.name });
  });
}

/**
 * The event token of /init, valid for this MAC: returns the boot id it names, or the reply
 * sent. A refusal touches no boot; on a configured MAC it shows as a security event.
 */
function checkEventToken(ctx: HttpContext, mac: string, request: FastifyRequest, reply: FastifyReply): string | FastifyReply {
  const token = bearer(request);
  const boot = token ? verifyEventToken(ctx.layers.installKey, mac, token) : null;
  if (boot === null) {
    const detail = token ? 'boot event with a token not issued for this MAC' : 'boot event without a token';
    request.note.warning = `refused ${detail}`;
    ctx.timeline.security(mac, { kind: 'event-token', detail, peer: request.ip });
    return reply.code(401).header('WWW-Authenticate', 'Bearer').send({ error: `${detail}: /init sends the netboot.token= of its kernel command line as a bearer token` });
  }
  return boot;
}

/** Read and admin access to /api, from the config in force (so a reload changes tokens at once). */
function authorize(config: Config, hostToken: string, access: 'read' | 'admin', request: FastifyRequest, reply: FastifyReply): FastifyReply | null {
  const api = config.server.api;
  const adminTokens = [api.adminToken, config.server.apiToken].filter((t): t is string => t !== undefined);
  const readTokens = [api.readToken, hostToken].filter((t): t is string => t !== undefined);
  const given = bearer(request);
  if (access === 'admin' && adminTokens.length === 0) {
    return reply.code(404).send({ error: 'mutating API endpoints are disabled: set server.api.adminToken in the config' });
  }
  if (access === 'read' && api.public) return null;
  if (given !== null && matchesAny(given, adminTokens)) return null;
  if (given !== null && access === 'read' && matchesAny(given, readTokens)) return null;
  if (given === null) {
    const closed = access === 'read' && adminTokens.length === 0 && api.readToken === undefined;
    const error = closed
      ? 'the API needs a token and none is configured: set server.api.readToken (or server.api.adminToken) in the config, or server.api.public: true for open reads'
      : `missing bearer token (Authorization: Bearer <server.api.${access === 'read' ? 'readToken' : 'adminToken'}>)`;
    return reply.code(401).header('WWW-Authenticate', 'Bearer').send({ error });
  }
  request.note.warning = access === 'admin' && matchesAny(given, readTokens) ? 'API mutation with a read-only token' : 'API call with a wrong token';
  return reply.code(403).send({ error: access === 'admin' && matchesAny(given, readTokens) ? 'this token may only read; mutations need server.api.adminToken' : 'wrong token' });
}

function bearer(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  return match ? match[1]! : null;
}

/** Constant-time: both sides are hashed first, so neither length nor content leaks through timing. */
export function matchesAny(given: string, tokens: readonly string[]): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const g = digest(given);
  let found = false;
  for (const token of tokens) found = timingSafeEqual(g, digest(token)) || found;
  return found;
}

/**
 * A token that reads this config's server's API, for clients on the server's host (`netboot gc`,
 * the lab): the configured read or admin token, else the host token from the state dir.
 */
export function localReadToken(config: Config): string | null {
  return config.server.api.readToken ?? config.server.api.adminToken ?? config.server.apiToken ?? readHostApiToken(config.server.stateDir);
}
