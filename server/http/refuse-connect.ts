import type { Server } from 'node:http';
import type { Socket } from 'node:net';

/** How long a refused CONNECT's connection may stay open while the client finishes sending. */
const LINGER_MS = 10_000;

/**
 * Answers CONNECT (proxy tunnel) requests with 405: without a listener Node closes their
 * connection without a word. Node hands such a socket over detached from the HTTP server
 * (closeAllConnections does not see it) and paused, and HTTP sockets are half-open: after our
 * answer it would wait forever for the client's FIN, which sits behind any body the client is
 * still sending, and hold up the server's close. So what the client sends is read and dropped,
 * the socket is destroyed after LINGER_MS at the latest, and the server's close destroys the rest.
 */
export function refuseConnect(server: Server): { destroyAll(): void } {
  const open = new Set<Socket>();
  server.on('connect', (_request, socket: Socket) => {
    open.add(socket);
    const linger = setTimeout(() => socket.destroy(), LINGER_MS).unref();
    socket.once('close', () => {
      clearTimeout(linger);
      open.delete(socket);
    });
    socket.on('error', () => undefined);
    socket.resume();
    // Once the client's FIN arrives too, Node destroys the socket (both halves ended).
    socket.end('HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD, POST\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  return {
    destroyAll() {
      for (const socket of open) socket.destroy();
    },
  };
}
