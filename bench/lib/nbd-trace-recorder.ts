/**
 * Child process of bench/lib/record-nbd-trace.ts, run inside the lab's namespace: an NBD
 * server (netboot's own) exporting one squashfs under its image id, printing every read as a
 * JSON line `{"t":ms,"offset":n,"length":n,"conn":"ip:port"}` on stdout.
 *
 *   node --import tsx bench/lib/nbd-trace-recorder.ts FILE EXPORT PORT
 */
import { NbdServer } from '../../server/nbd/server.ts';

const [file, exportName, port] = process.argv.slice(2);
if (!file || !exportName || !port) throw new Error('usage: nbd-trace-recorder.ts FILE EXPORT PORT');
const start = Date.now();
const server = new NbdServer({
  lookupExport: (name) => (name === exportName ? { path: file, size: 0 } : null),
  onRead: (e) => process.stdout.write(JSON.stringify({ t: Date.now() - start, offset: e.offset, length: e.length, conn: `${e.client.address}:${e.client.port}` }) + '\n'),
});
await server.start({ host: '0.0.0.0', port: Number(port) });
process.once('SIGTERM', () => void server.stop().then(() => process.exit(0)));
process.stdout.write(`ready ${port}\n`);
