import type { FastifyInstance } from 'fastify';
import { bootingMachine, planBoot } from '../boot/plan.ts';
import { normalizeMac } from '../config/mac.ts';
import { AccountError } from '../layers/accounts.ts';
import { buildLayer } from '../layers/build.ts';
import { TemplateError } from '../layers/template.ts';
import { LayerSourceError } from '../layers/tree.ts';
import type { Redemption } from '../layers/signing.ts';
import { isValidImageId } from './artifact-store.ts';
import { serverUrl, type HttpContext } from './context.ts';
import { etagMatches } from './range.ts';
import { confirmMachine } from './identity.ts';

/**
 * GET /machines/<mac>/layer: the machine's top layer as an uncompressed tar.
 * - signed (`?boot=&image=&exp=&sig=`, written into the kernel command line by the boot
 *   script): the full layer with secrets/ and SSH host private keys, for the machine itself
 *   (identity evidence, server/boot/identity.ts) and a few deliveries per boot id;
 * - unsigned: the public part only, cacheable by ETag (for inspection and tooling); it never
 *   creates state (no host keys are generated for it).
 */
export function registerLayerRoute(app: FastifyInstance, ctx: HttpContext): void {
  app.get<{ Params: { mac: string }; Querystring: Record<string, string | undefined> }>(
    '/machines/:mac/layer',
    { exposeHeadRoute: false },
    async (request, reply) => {
      request.note.phase = 'layer';
      const mac = normalizeMac(request.params.mac);
      if (!mac) return reply.code(400).send({ error: `"${request.params.mac}" is not a MAC address` });
      request.note.mac = mac;
      const config = ctx.getConfig();
      const plan = planBoot(config, mac);
      const machine = bootingMachine(plan);
      if (!machine) return reply.code(404).send({ error: `${mac} boots no image (unknown-MAC policy ${plan.kind})` });

      const signed = request.query.sig !== undefined;
      let imageId: string | null;
      let redemption: Redemption | null = null;
      if (signed) {
        if (!(await confirmMachine(ctx, request, mac, 'layer'))) {
          return reply.code(403).send({ error: `this layer is only served to ${mac} itself, and this request did not come from it` });
        }
        const verdict = ctx.layers.signer.redeem(mac, request.query);
        if (!verdict.ok) {
          request.note.warning = `signed layer refused: ${verdict.reason}`;
          return reply.code(verdict.status).send({ error: verdict.reason });
        }
        redemption = verdict;
        imageId = verdict.grant.image;
      } else {
        imageId = request.query.image ?? (await ctx.artifacts.currentId(machine.image));
      }
      // Until the response is complete the boot id stays redeemable (after a failure or a cut download /init retries).
      const grant = redemption;
      if (grant) {
        // 'finish': the whole response is handed to the kernel, the delivery stays counted. Node emits it also when
        // the peer reset the connection with bytes still queued (the socket is errored then): that one broke off.
        const socket = request.raw.socket;
        reply.raw.once('finish', () => (socket.errored ? grant.release() : grant.delivered()));
        reply.raw.once('close', () => grant.release());
      }
      if (imageId !== null && !isValidImageId(imageId)) return reply.code(404).send({ error: `no built image with id ${imageId}` });
      if (imageId === null) {
        return reply.code(503).header('Retry-After', '10').send({ error: `image ${machine.image} is not built yet` });
      }

      const began = ctx.now();
      const squashfs = ctx.artifacts.artifactPath(imageId, 'rootfs.squashfs');
      if (squashfs === null || !(await ctx.artifacts.manifest(imageId))) return reply.code(404).send({ error: `no built image with id ${imageId}` });
      const imageAccounts = await ctx.layers.imageAccounts(squashfs).catch((err: Error) => {
        request.note.error = err.message;
        return null;
      });
      if (!imageAccounts) return reply.code(503).header('Retry-After', '10').send({ error: `cannot read /etc/passwd and /etc/group of image ${imageId}: is it built?` });
      let layer;
      try {
        layer = await buildLayer({
          config,
          machine,
          imageId,
          imageAccounts,
          installKey: ctx.layers.installKey,
          stateDir: ctx.stateDir,
          serverUrl: serverUrl(config),
          withSecrets: signed,
        });
      } catch (err) {
        request.note.error = (err as Error).message;
        const known = err instanceof LayerSourceError || err instanceof TemplateError || err instanceof AccountError;
        return reply.code(500).send({ error: known ? (err as Error).message : 'internal error building the layer (see the server log)' });
      }

      reply.type('application/x-tar').header('ETag', layer.etag).header('Cache-Control', signed ? 'no-store' : 'no-cache');
      if (!signed && etagMatches(request.headers['if-none-match'], layer.etag)) return reply.code(304).send();
      if (redemption) {
        // Counted on disk before the first byte goes out (signing.ts); concurrent deliveries share the fsync.
        const unrecorded = await redemption.commit();
        if (unrecorded) ctx.log.error({ mac, phase: 'layer', err: unrecorded.message }, 'layer delivered, but the used-URL ledger could not be written (the count stays in memory until a restart)');
      }
      reply.raw.once('finish', () => {
        ctx.metrics.served('layer', layer.tar.length);
        if (signed) ctx.timeline.record(mac, 'layer', { source: 'http', bytes: layer.tar.length, durationMs: ctx.now() - began, imageId: imageId! });
      });
      return reply.send(layer.tar);
    },
  );
}
