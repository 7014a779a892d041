import type { FastifyInstance } from 'fastify';
import { planBoot } from '../boot/plan.ts';
import { macToHyphens, normalizeMac } from '../config/mac.ts';
import { serverUrl, type HttpContext } from './context.ts';
import { confirmMachine, refuseScript } from './identity.ts';
import { renderBoot, renderDeny, renderGeneric, renderLocal, renderMenu, renderNotBuilt } from './ipxe.ts';
import { eventToken } from '../layers/signing.ts';

const IPXE_TYPE = 'text/plain; charset=utf-8';

export function registerScriptRoutes(app: FastifyInstance, ctx: HttpContext): void {
  app.get('/boot.ipxe', async (request, reply) => {
    request.note.phase = 'script';
    return reply.type(IPXE_TYPE).header('Cache-Control', 'no-store').send(renderGeneric(ctx.templates, serverUrl(ctx.getConfig())));
  });

  app.get<{ Params: { mac: string }; Querystring: { image?: string } }>('/machines/:mac/boot.ipxe', async (request, reply) => {
    request.note.phase = 'script';
    const mac = normalizeMac(request.params.mac);
    if (!mac) return reply.code(400).type(IPXE_TYPE).send(`#!ipxe\necho netboot: "${request.params.mac.replace(/[^\w:.-]/g, '?')}" is not a MAC address\nexit\n`);
    request.note.mac = mac;
    const config = ctx.getConfig();
    const server = serverUrl(config);
    reply.type(IPXE_TYPE).header('Cache-Control', 'no-store');
    const plan = planBoot(config, mac, request.query.image);
    switch (plan.kind) {
      case 'deny':
        ctx.timeline.record(mac, 'script', { source: 'http', detail: 'refused: unknown MAC, policy deny' });
        return renderDeny(ctx.templates, server, mac);
      case 'local':
        ctx.timeline.record(mac, 'script', { source: 'http', detail: 'unknown MAC, policy local: exit to local disk' });
        return renderLocal(ctx.templates, server, mac);
      case 'menu': {
        const images = await Promise.all(
          [...config.images.keys()].map(async (name) => ({ name, built: (await ctx.artifacts.currentId(name)) !== null })),
        );
        ctx.timeline.record(mac, 'script', { source: 'http', detail: 'unknown MAC, policy menu' });
        return renderMenu(ctx.templates, { server, mac, images, defaultImage: plan.machine?.image ?? null, timeoutSeconds: plan.timeout });
      }
      case 'boot':
        break;
    }

    const { machine, image } = plan;
    const imageId = await ctx.artifacts.currentId(image.name);
    const query = request.query.image !== undefined ? `?image=${encodeURIComponent(request.query.image)}` : '';
    if (imageId === null) {
      ctx.timeline.record(mac, 'script', { source: 'http', detail: `image ${image.name} not built yet` });
      return renderNotBuilt(ctx.templates, { server, machine, scriptUrl: `${server}/machines/${macToHyphens(mac)}/boot.ipxe${query}` });
    }
    // The script carries this boot's grants (layer URL, event token): only for the machine itself.
    if (!(await confirmMachine(ctx, request, mac, 'script'))) return refuseScript(reply, mac, config.server.rebootDelay);
    const boot = ctx.timeline.record(mac, 'script', { source: 'http', imageId, detail: `image ${image.name}` });
    const grant = ctx.layers.signer.sign(mac, boot.id, imageId, ctx.layerTtlSeconds);
    const layerUrl = `${server}/machines/${macToHyphens(mac)}/layer?boot=${grant.boot}&image=${grant.image}&exp=${grant.exp}&sig=${grant.sig}`;
    return renderBoot(ctx.templates, {
      server,
      machine,
      image,
      imageId,
      layerUrl,
      eventToken: eventToken(ctx.layers.installKey, mac, boot.id),
      rebootDelay: config.server.rebootDelay,
      nbd: `${config.server.address}:${config.server.nbd.port}`,
      artifactBase: config.server.artifactBaseUrl,
    });
  });
}
