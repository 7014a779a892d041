// Logs `count` lines of `size` bytes through the server's stdout logger, 100 per turn of the
// event loop (as a server does), then reports on stderr and ends: with `exit`, at once
// (process.exit: no turn is left for pending writes); with `stay`, never (a server between
// storms: it waits to be killed); else when the event loop is done.
import { createLogger } from '../../server/log.ts';

const [count, size] = process.argv.slice(2, 4).map(Number) as [number, number];
const ending = process.argv[4];
const log = createLogger('info', false);
const pad = 'x'.repeat(size);
let i = 0;
const turn = () => {
  for (const end = Math.min(count, i + 100); i < end; i++) log.info({ i, pad }, 'line');
  if (i < count) return setImmediate(turn);
  process.stderr.write('logged\n');
  if (ending === 'exit') process.exit(0);
  if (ending === 'stay') setInterval(() => {}, 60_000);
};
turn();
