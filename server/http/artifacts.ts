import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AdmissionDecision, Ticket } from '../admission/queue.ts';
import { ROOT_STREAM_MIN_BYTES, RootStreams, STREAM_NAMES, waitBody, waitStatusMessage, type HoldOutcome, type StreamBudget } from '../admission/root-streams.ts';
import { peerAddress } from '../boot/identity.ts';
import { normalizeMac } from '../config/mac.ts';
import { servedFiles } from '../fs/open-file-cache.ts';
import type { StreamQueueMetrics } from '../events/metrics.ts';
import type { Phase } from '../events/timeline.ts';
import { ARTIFACT_NAMES, isValidImageId, type ArtifactName, type ImageManifestView } from './artifact-store.ts';
import type { HttpContext } from './context.ts';
import { etagMatches, parseRange } from './range.ts';
import { sendFileRange, type SendResult } from './send-file.ts';

/** The artifacts whose bodies pass admission control, and their budget. */
const BUDGET_OF: Partial<Record<ArtifactName, StreamBudget>> = {
  vmlinuz: 'maxBootFileStreams',
  'initrd.img': 'maxBootFileStreams',
  'image-initrd.img': 'maxBootFileStreams',
  'rootfs.squashfs': 'maxRootStreams',
};

const PHASE_OF: Partial<Record<ArtifactName, Phase>> = {
  vmlinuz: 'kernel',
  'initrd.img': 'initrd',
  'image-initrd.img': 'initrd',
  'rootfs.squashfs': 'rootfs',
};


/**
 * Build artifacts, streamed from disk. Ids are content-addressed, so every response is
 * cacheable forever. Whole-file GETs carrying `?mac=` (the scripts add it) are recorded in
 * that machine's boot timeline; ranged reads only count bytes. Streams (rootfs, kernel and initrd
 * bodies of at least ROOT_STREAM_MIN_BYTES) pass admission control first, root images and boot
 * files each in a queue of their own: over budget, held, then 503 + Retry-After.
 */
export function registerArtifactRoutes(app: FastifyInstance, ctx: HttpContext): void {
  const manifests = new Map<string, ImageManifestView>();
  const admission = () => ctx.getConfig().server.admission;
  const queues: Record<StreamBudget, RootStreams> = {
    maxRootStreams: new RootStreams(admission, ctx.now, 'maxRootStreams'),
    maxBootFileStreams: new RootStreams(admission, ctx.now, 'maxBootFileStreams'),
  };
  const metricsOf: Record<StreamBudget, StreamQueueMetrics> = { maxRootStreams: ctx.metrics.rootStreams, maxBootFileStreams: ctx.metrics.bootFileStreams };
  const manifestOf = async (id: string): Promise<ImageManifestView | null> => {
    const cached = manifests.get(id);
    if (cached) return cached;
    const manifest = await ctx.artifacts.manifest(id);
    if (manifest) {
      manifests.set(id, manifest);
      if (manifests.size > 256) manifests.delete(manifests.keys().next().value!);
    }
    return manifest;
  };

  app.route<{ Params: { id: string; name: string }; Querystring: { mac?: string } }>({
    method: ['GET', 'HEAD'],
    url: '/images/:id/:name',
    exposeHeadRoute: false,
    handler: async (request, reply) => {
      const { id, name } = request.params;
      // A repeated ?mac= parses as an array: not a MAC.
      const mac = typeof request.query.mac === 'string' ? normalizeMac(request.query.mac) : null;
      if (mac) request.note.mac = mac;
      const phase = PHASE_OF[name as ArtifactName];
      request.note.phase = phase ?? 'artifact';
      if (!isValidImageId(id) || !(ARTIFACT_NAMES as readonly string[]).includes(name)) return notFound(reply);
      const artifact = name as ArtifactName;
      const path = ctx.artifacts.artifactPath(id, artifact);
      // One shared open fd per artifact version (see OpenFileCache), held until the response is done.
      const file = path === null ? null : servedFiles.acquire(path);
      if (file === null) return notFound(reply);
      try {
        const info = file.stat;

        const digest = artifact === 'manifest.json' ? undefined : (await manifestOf(id))?.artifacts[artifact];
        const etag = digest && digest.size === info.size
          ? `"${digest.sha256}"`
          : `"${createHash('sha256').update(`${id}\0${artifact}\0${info.size}\0${info.mtimeMs}`).digest('hex').slice(0, 32)}"`;
        reply
          .header('ETag', etag)
          .header('Cache-Control', 'public, max-age=31536000, immutable')
          .header('Accept-Ranges', 'bytes')
          .header('Last-Modified', info.mtime.toUTCString())
          .type(artifact === 'manifest.json' ? 'application/json' : 'application/octet-stream');
        if (etagMatches(request.headers['if-none-match'], etag)) return reply.code(304).send();

        const ifRange = request.headers['if-range'];
        const rangeHeader = ifRange === undefined || ifRange === etag ? request.headers.range : undefined;
        const range = parseRange(rangeHeader, info.size);
        if (range.kind === 'unsatisfiable') {
          return reply.code(416).header('Content-Range', `bytes */${info.size}`).send();
        }
        const start = range.kind === 'range' ? range.start : 0;
        const end = range.kind === 'range' ? range.end : info.size - 1;
        const length = info.size === 0 ? 0 : end - start + 1;
        let ticket: Ticket | null = null;
        const budget = BUDGET_OF[artifact];
        if (request.method === 'GET' && budget && length >= ROOT_STREAM_MIN_BYTES) {
          const streams = queues[budget];
          const who = { address: peerAddress(request.ip), ...(mac ? { machine: mac } : {}) };
          let decision: AdmissionDecision | HoldOutcome = streams.request(who, ctx.now());
          syncMetrics(budget);
          if (decision.kind === 'wait') {
            if (mac && decision.first) {
              ctx.timeline.record(mac, 'queued', { source: 'http', detail: `all ${STREAM_NAMES[budget].all} busy: number ${decision.position} of ${decision.queued} in the queue`, imageId: id });
            }
            // Held open until a slot is ours (or the hold runs out: then the 503 below).
            decision = await streams.hold(who, (cancel) => reply.raw.once('close', cancel));
            syncMetrics(budget);
            if (decision.kind === 'gone') return hangUp(reply);
          }
          if (decision.kind !== 'admit') return tellToWait(request, reply, decision, budget);
          if (reply.raw.destroyed) {
            release(budget, decision.ticket, false);
            return hangUp(reply);
          }
          ticket = decision.ticket;
          if (decision.waited) metricsOf[budget].waited(decision.waited.ms);
          if (mac && decision.waited) {
            const { ms, retries } = decision.waited;
            ctx.timeline.record(mac, 'queued', { source: 'http', durationMs: ms, detail: `waited ${(ms / 1000).toFixed(1)} s for a ${STREAM_NAMES[budget].one} (${retries} retries)`, imageId: id });
          }
        }
        if (range.kind === 'range') reply.code(206).header('Content-Range', `bytes ${start}-${end}/${info.size}`);
        reply.header('Content-Length', length);
        if (request.method === 'HEAD' || length === 0) return reply.send();

        const began = ctx.now();
        // Past this point we write the body ourselves (see send-file.ts); fastify's onResponse hook still runs.
        reply.hijack();
        const record = (result: SendResult) => {
          if (ticket && budget) release(budget, ticket, result.complete);
          ctx.metrics.served(artifact, result.bytes);
          if (mac && phase && range.kind === 'none') {
            ctx.timeline.record(mac, phase, {
              source: 'http',
              bytes: result.bytes,
              durationMs: ctx.now() - began,
              imageId: id,
              ...(result.complete ? {} : { detail: `aborted after ${result.bytes} of ${length} bytes` }),
            });
          }
        };
        const unguard = ticket && budget
          ? queues[budget].guard((ranMs, waiting) => {
              request.note.warning = `${STREAM_NAMES[budget].one} cut after ${Math.round(ranMs / 1000)} s while ${waiting} machines waited (the client may resume)`;
              metricsOf[budget].preempted();
              reply.raw.destroy();
            })
          : null;
        try {
          // Inside the try: whatever throws, an admitted stream's slot is released below.
          reply.raw.writeHead(reply.statusCode, reply.getHeaders() as Record<string, string>);
          await sendFileRange(reply.raw, file, start, end, record);
        } catch (err) {
          request.note.error = (err as Error).message;
          reply.raw.destroy();
        } finally {
          unguard?.();
          if (ticket && budget) release(budget, ticket, false);
        }
      } finally {
        file.release();
      }
    },
  });

  function syncMetrics(budget: StreamBudget): void {
    metricsOf[budget].state(queues[budget].queue.active, queues[budget].queue.queued);
  }

  function release(budget: StreamBudget, ticket: Ticket, complete: boolean): void {
    queues[budget].release(ticket, ctx.now(), complete);
    syncMetrics(budget);
  }

  /** Over budget: 503 + Retry-After, never cached (the artifact headers set so far promised the opposite). */
  function tellToWait(request: FastifyRequest, reply: FastifyReply, decision: Exclude<AdmissionDecision, { kind: 'admit' }>, budget: StreamBudget) {
    for (const name of ['etag', 'last-modified', 'accept-ranges', 'content-range', 'content-length']) reply.removeHeader(name);
    metricsOf[budget].refused(decision.kind === 'wait' ? 'wait' : decision.reason === 'queue' ? 'queue_full' : 'address_full');
    if (decision.kind === 'full') request.note.warning = `${STREAM_NAMES[budget].one} queue full (${decision.reason}): told to retry without a place`;
    reply.raw.statusMessage = waitStatusMessage(decision);
    return reply
      .code(503)
      .header('Retry-After', String(decision.retryAfterSeconds))
      .header('Cache-Control', 'no-store')
      .type('text/plain; charset=utf-8')
      .send(waitBody(decision, ctx.getConfig().server.admission[budget], STREAM_NAMES[budget].all));
  }
}

/** The client went away while it waited: nothing to send. */
function hangUp(reply: FastifyReply): void {
  reply.hijack();
  reply.raw.destroy();
}

function notFound(reply: FastifyReply) {
  return reply.code(404).type('text/plain; charset=utf-8').send('not found\n');
}
