import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { peerAddress, verifyIdentity } from '../boot/identity.ts';
import { normalizeMac } from '../config/mac.ts';
import type { HttpContext } from './context.ts';

/**
 * Before a request gets what only one machine may have (its boot grants, its secrets): is the
 * peer that machine? A refusal is logged at warn with both MACs, counted, and shown as a
 * security event on the claimed machine's timeline (configured machines only: a stranger's
 * made-up MACs must not fill the timeline). Returns true when the request may go on.
 */
export async function confirmMachine(ctx: HttpContext, request: FastifyRequest, mac: string, what: 'script' | 'layer'): Promise<boolean> {
  const verdict = await verifyIdentity(ctx.identity, mac, request.ip);
  if (verdict.ok) {
    request.note.evidenced = true;
    return true;
  }
  const peer = peerAddress(request.ip);
  const detail = `${what} for ${mac} refused: ${verdict.reason}`;
  request.note.warning = `${detail}${verdict.peerMac ? ` (claimed ${mac}, peer ${verdict.peerMac})` : ''}`;
  ctx.timeline.security(mac, { kind: `identity-${what}`, detail, peer: verdict.peerMac ? `${peer} (${verdict.peerMac})` : peer });
  return false;
}

/** The 403 a refused script request gets: iPXE shows it on the machine's console, then retries after a while. */
export function refuseScript(reply: FastifyReply, mac: string, rebootDelay: number): FastifyReply {
  return reply
    .code(403)
    .send(
      `#!ipxe\necho netboot: this server cannot confirm that this request comes from ${mac} (see server.identity in the netboot README)\n` +
        `sleep ${Math.max(rebootDelay, 5)}\nreboot\n`,
    );
}

/** The artifact route (server/http/artifacts.ts), whose `?mac=` names the timeline a download lands on. */
const ARTIFACT_ROUTE = '/images/:id/:name';

/**
 * Artifacts are public, but the boot timeline is the machine's: iPXE and /init add `?mac=` so a
 * download (kernel, initrd, rootfs, a queue wait) shows on their boot. A claim without identity
 * evidence is dropped before the route sees it: the download is served all the same, attributed
 * to no machine, so a stranger cannot open boots or write phases on another machine's timeline
 * (nor hold a queue place in its name). No security event: an HTTP cache in front asks this way too.
 */
export function dropUnprovenArtifactClaims(app: FastifyInstance, ctx: HttpContext): void {
  app.addHook('preHandler', async (request) => {
    if (request.routeOptions.url !== ARTIFACT_ROUTE) return;
    const query = request.query as Record<string, unknown>;
    const mac = typeof query.mac === 'string' ? normalizeMac(query.mac) : null;
    if (!mac) return;
    if ((await verifyIdentity(ctx.identity, mac, request.ip)).ok) request.note.evidenced = true;
    else delete query.mac;
  });
}
