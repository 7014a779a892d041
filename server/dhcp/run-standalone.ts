/**
 * The DHCP server alone in its own process, for tests that run it inside a network namespace
 * (a process cannot move itself into one) and for trying it by hand:
 *
 *   ip netns exec NS node --import tsx server/dhcp/run-standalone.ts CONFIG.json|- [--dhcp-port N] [--pxe-port N]
 *
 * The config is netboot's config as JSON (a file, or stdin with `-`). stdout gets `ready
 * {"dhcp":67,"pxe":4011}` once both ports are bound, then `exchange {...}` per handled
 * packet; pino logs go to stderr. SIGHUP re-reads a config file (`reloaded` on stdout; a bad
 * file keeps the old config). SIGTERM/SIGINT stop it (leases flushed first).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pino } from 'pino';
import { parseConfig } from '../config/load.ts';
import { DhcpServer } from './server.ts';

const args = process.argv.slice(2);
const source = args[0];
if (!source) {
  process.stderr.write('usage: run-standalone.ts CONFIG.json|- [--dhcp-port N] [--pxe-port N]\n');
  process.exit(2);
}
const flag = (name: string): number | undefined => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? Number(args[i + 1]) : undefined;
};
const read = () => parseConfig(readFileSync(source === '-' ? 0 : source, 'utf8'), source === '-' ? resolve('stdin.json') : resolve(source));
let config = read();
const logger = pino({ level: process.env.LOG_LEVEL ?? 'info', base: undefined }, pino.destination(2));
const server = new DhcpServer({
  config: () => config,
  logger,
  bind: config.server.bind,
  ports: { dhcp: flag('--dhcp-port'), pxe: flag('--pxe-port') },
  onExchange: (exchange) => process.stdout.write(`exchange ${JSON.stringify(exchange)}\n`),
});
const ports = await server.start();
process.stdout.write(`ready ${JSON.stringify(ports)}\n`);
process.on('SIGHUP', () => {
  if (source === '-') return;
  try {
    config = read();
    process.stdout.write('reloaded\n');
  } catch (err) {
    logger.error({ err: (err as Error).message }, 'config reload failed; keeping the old one');
  }
});
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    void server.stop().then(() => process.exit(0));
  });
}
