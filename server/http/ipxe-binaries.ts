import { stat } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import { ipxeBinaryPath } from '../ipxe-binaries.ts';
import type { HttpContext } from './context.ts';
import { sendFileRange } from './send-file.ts';

/**
 * GET|HEAD /ipxe/<binary>: the iPXE binaries over HTTP, for UEFI HTTP Boot clients (DHCP
 * arch 16 is handed this URL as its boot file). Whole files only: firmware asks for the size
 * (HEAD) and then the file.
 */
export function registerIpxeBinaryRoutes(app: FastifyInstance, ctx: HttpContext): void {
  app.route<{ Params: { name: string } }>({
    method: ['GET', 'HEAD'],
    url: '/ipxe/:name',
    exposeHeadRoute: false,
    handler: async (request, reply) => {
      request.note.phase = 'ipxe';
      const path = ipxeBinaryPath(request.params.name, ctx.ipxeDir);
      const info = path ? await stat(path).catch(() => null) : null;
      if (!path || !info?.isFile()) return reply.code(404).type('text/plain; charset=utf-8').send('not found\n');
      reply.header('Content-Length', info.size).type('application/efi');
      if (request.method === 'HEAD' || info.size === 0) return reply.send();
      reply.hijack();
      reply.raw.writeHead(200, reply.getHeaders() as Record<string, string>);
      await sendFileRange(reply.raw, path, 0, info.size - 1, () => undefined).catch((err: Error) => {
        request.note.error = err.message;
        reply.raw.destroy();
      });
    },
  });
}
