/**
 * A TFTP server in its own process, for tests that must run it inside a network namespace
 * (Node cannot enter one in-process). Args: ROOT HOST PORT TIMEOUT_MS [MAX_TIMEOUT_MS] (the backoff
 * cap; a client's `timeout` option above it is refused). Prints one JSON line
 * `{"ready":{address,port}}`, then one `{"transfer":event}` line per transfer; SIGTERM stops it.
 */
import { dirSource } from '../../server/tftp/files.ts';
import { TftpServer } from '../../server/tftp/server.ts';

const [root, host, port, timeoutMs, maxTimeoutMs] = process.argv.slice(2);
if (!root || !host || !port || !timeoutMs) {
  process.stderr.write('usage: serve-child.ts ROOT HOST PORT TIMEOUT_MS\n');
  process.exit(2);
}
const server = new TftpServer({
  host,
  port: Number(port),
  source: dirSource(root),
  limits: { timeoutMs: Number(timeoutMs), maxRetries: 10, ...(maxTimeoutMs ? { maxTimeoutMs: Number(maxTimeoutMs) } : {}) },
  onTransfer: (event) => process.stdout.write(JSON.stringify({ transfer: event }) + '\n'),
});
const address = await server.start();
process.stdout.write(JSON.stringify({ ready: address }) + '\n');
process.once('SIGTERM', () => {
  void server.stop().then(() => process.exit(0));
});
