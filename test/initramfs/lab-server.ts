/**
 * A tiny stand-in for the netboot HTTP server, run inside a test namespace:
 *   node --import tsx lab-server.ts <host> <port> <routes.json>
 * routes.json: { "/url/path": { "file": "/abs/path", "truncate"?: bytes } }. Serves GET/HEAD
 * with Range (for resumed downloads); 404 for anything else. Each POST to
 * /api/machines/<mac>/events is printed to stdout as `EVENT <mac> <json body>`; each answered GET as
 * `SERVED <path> <body bytes sent>` once its response ends.
 */
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';

const [host, port, routesFile] = process.argv.slice(2) as [string, string, string];
const routes = JSON.parse(readFileSync(routesFile, 'utf8')) as Record<string, { file: string; truncate?: number }>;

const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  const events = /^\/api\/machines\/([0-9a-f-]{17})\/events$/.exec(url.pathname);
  if (req.method === 'POST' && events) {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8').replace(/\n/g, ' ');
      process.stdout.write(`EVENT ${events[1]} ${body}\n`);
      res.writeHead(204).end();
    });
    return;
  }
  const route = routes[url.pathname];
  if (!route || (req.method !== 'GET' && req.method !== 'HEAD')) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  const size = Math.min(statSync(route.file).size, route.truncate ?? Infinity);
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  const start = range ? Number(range[1]) : 0;
  if (start > size || (range && start === size)) {
    res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
    return;
  }
  const headers: Record<string, string | number> = { 'content-length': size - start, 'accept-ranges': 'bytes' };
  if (range) headers['content-range'] = `bytes ${start}-${size - 1}/${size}`;
  res.writeHead(range ? 206 : 200, headers);
  if (req.method === 'HEAD' || size === start) {
    res.end();
    return;
  }
  let sent = 0;
  const body = createReadStream(route.file, { start, end: size - 1 });
  body.on('data', (chunk) => (sent += chunk.length));
  res.on('close', () => process.stdout.write(`SERVED ${url.pathname} ${sent}\n`));
  body.pipe(res);
});
server.listen(Number(port), host, () => process.stdout.write(`LISTENING ${host}:${port}\n`));
