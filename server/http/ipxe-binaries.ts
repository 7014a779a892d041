import type { FastifyInstance } from 'fastify';
import { servedFiles } from '../fs/open-file-cache.ts';
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
      const file = path ? servedFiles.acquire(path) : null;
      if (!file) return reply.code(404).type('text/plain; charset=utf-8').send('not found\n');
      try {
        const { size } = file.stat;
        reply.header('Content-Length', size).type('application/efi');
        if (request.method === 'HEAD' || size === 0) return reply.send();
        reply.hijack();
        reply.raw.writeHead(200, reply.getHeaders() as Record<string, string>);
        await sendFileRange(reply.raw, file, 0, size - 1, () => undefined).catch((err: Error) => {
          request.note.error = err.message;
          reply.raw.destroy();
        });
      } finally {
        file.release();
      }
    },
  });
}
