// A child of bench/log-stdout.ts: logs `count` request lines on stdout, one every `paceMs`
// (a 500-machine storm logs about 6500 in 10 s), through netboot's logger (`netboot`) or through
// pino's own asynchronous destination, one write(2) per line when the writes keep up (`pino-async`).
// Reports its CPU time as JSON on stderr.
import { pino } from 'pino';
import { createLogger } from '../../server/log.ts';

const [variant, count, paceMs] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const log =
  variant === 'netboot'
    ? createLogger('info', false)
    : pino({ level: 'info', base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: 1, sync: false }));
const start = process.cpuUsage();
let i = 0;
const next = () => {
  log.child({ mac: '52:54:00:88:00:01', phase: 'script' }).info({ method: 'GET', url: '/machines/52-54-00-88-00-01/boot.ipxe', status: 200, ms: 1.2, ip: '10.88.1.2', i }, 'http');
  if (++i < count) return setTimeout(next, paceMs);
  const used = process.cpuUsage(start);
  process.stderr.write(`${JSON.stringify({ cpuMs: (used.user + used.system) / 1000 })}\n`);
};
next();
