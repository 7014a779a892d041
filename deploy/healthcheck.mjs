// Liveness probe for the container (and any monitor): GET /healthz on the HTTP port the config
// names. Usage: node deploy/healthcheck.mjs [CONFIG]; exit 0 when the server answers, 1 otherwise.
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

const file = process.argv[2] ?? '/etc/netboot/netboot.yaml';
let server = {};
try {
  server = parse(readFileSync(file, 'utf8'))?.server ?? {};
} catch {
  // An unreadable config: the server keeps its last good one, so probe the defaults.
}
const port = Number(server.httpPort ?? 8080);
const host = !server.bind || server.bind === '0.0.0.0' ? '127.0.0.1' : server.bind;
const url = `http://${host}:${port}/healthz`;
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(4000) });
  if (!res.ok) console.error(`netboot healthcheck: ${url}: HTTP ${res.status}`);
  process.exit(res.ok ? 0 : 1);
} catch (err) {
  console.error(`netboot healthcheck: ${url}: ${err.cause?.message ?? err.message}`);
  process.exit(1);
}
