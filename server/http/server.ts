import { logSendfilePath } from './native-sendfile.ts';
import Fastify, { type FastifyInstance } from 'fastify';
import { DhcpSightings } from '../boot/dhcp-sightings.ts';
import { kernelNeighbours } from '../boot/neighbours.ts';
import { LayerService } from '../layers/service.ts';
import { redactSignatures } from '../layers/signing.ts';
import { registerApiRoutes } from './api.ts';
import { registerArtifactRoutes } from './artifacts.ts';
import { registerIpxeBinaryRoutes } from './ipxe-binaries.ts';
import type { HttpContext, HttpDeps } from './context.ts';
import { loadIpxeTemplates } from './ipxe.ts';
import { dropUnprovenArtifactClaims } from './identity.ts';
import { registerLayerRoute } from './layer-route.ts';
import { refuseConnect } from './refuse-connect.ts';
import { registerScriptRoutes } from './scripts.ts';
import { registerUiRoutes } from './ui/index.ts';

export type { HttpDeps } from './context.ts';
export type { ArtifactStore, ArtifactName, ImageManifestView } from './artifact-store.ts';

/**
 * The HTTP boot service: iPXE scripts, image artifacts, per-machine layers, the boot-event
 * API, /metrics and /healthz. Call `.listen({ host, port })` on the result. Async because
 * it loads (or creates) the install key in the state dir first.
 */
export async function createHttpServer(deps: HttpDeps): Promise<FastifyInstance> {
  const now = deps.now ?? Date.now;
  logSendfilePath(deps.log);
  const ctx: HttpContext = {
    ...deps,
    now,
    templates: loadIpxeTemplates(deps.templatesDir),
    layers: await LayerService.open(deps.stateDir, now),
    layerTtlSeconds: deps.layerTtlSeconds ?? 900,
    identity: {
      getConfig: deps.getConfig,
      neighbours: deps.neighbours ?? kernelNeighbours(),
      sightings: deps.dhcpSightings ?? new DhcpSightings(),
      ...(deps.leaseLookup ? { leaseOf: deps.leaseLookup } : {}),
    },
  };
  // fastify's own request logging writes two lines per request; we write one, in onResponse.
  const app = Fastify({ logger: false, trustProxy: false, return503OnClosing: true, forceCloseConnections: true });
  const tunnels = refuseConnect(app.server);
  app.addHook('preClose', async () => tunnels.destroyAll());
  app.decorateRequest('note', null as never);
  app.addHook('onRequest', async (request) => {
    request.note = {};
  });
  app.addHook('onResponse', async (request, reply) => {
    const { mac, phase, warning, error } = request.note;
    const fields = {
      ...(mac ? { mac } : {}),
      ...(phase ? { phase } : {}),
      method: request.method,
      url: redactSignatures(request.url),
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime),
      remote: request.ip,
      ...(warning ? { warning } : {}),
      ...(error ? { error } : {}),
    };
    // A 503 with Retry-After tells a machine to wait (a root-stream queue, an image being built): not a failure.
    const toldToWait = reply.statusCode === 503 && reply.hasHeader('retry-after');
    if (error || (reply.statusCode >= 500 && !toldToWait)) deps.log.error(fields, error ?? 'request failed');
    else if (warning) deps.log.warn(fields, warning);
    else deps.log.info(fields, 'http');
  });
  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status >= 500) request.note.error = err.message;
    else request.note.warning = err.message;
    return reply.code(status).send({ error: status >= 500 ? 'internal error (see the server log)' : err.message });
  });

  app.get('/healthz', async () => ({ ok: true }));
  app.get('/metrics', async (_request, reply) => reply.type(deps.metrics.contentType).send(await deps.metrics.text()));
  registerScriptRoutes(app, ctx);
  dropUnprovenArtifactClaims(app, ctx);
  registerArtifactRoutes(app, ctx);
  registerIpxeBinaryRoutes(app, ctx);
  registerLayerRoute(app, ctx);
  registerApiRoutes(app, ctx);
  await registerUiRoutes(app, ctx, deps.ui);
  return app;
}
