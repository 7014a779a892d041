/**
 * A raw UDP endpoint for tests, run inside a namespace: `udp-peer.ts BIND PORT`. Binds with
 * broadcast enabled, prints `{"ready":PORT}`, then for every stdin line
 * `{"send":HEX,"to":ADDR,"port":N}` sends the datagram, for `{"echo":X}` prints it back once
 * everything before it was sent, and prints `{"recv":HEX,"from":ADDR,"port":N}` per datagram received.
 */
import { createSocket } from 'node:dgram';
import { createInterface } from 'node:readline';

const [bind = '0.0.0.0', port = '68'] = process.argv.slice(2);
const socket = createSocket({ type: 'udp4', reuseAddr: true });
socket.on('message', (msg, from) => process.stdout.write(JSON.stringify({ recv: msg.toString('hex'), from: from.address, port: from.port }) + '\n'));
socket.on('error', (err) => process.stderr.write(`udp-peer: ${err.message}\n`));
socket.bind(Number(port), bind, () => {
  socket.setBroadcast(true);
  process.stdout.write(JSON.stringify({ ready: socket.address().port }) + '\n');
});
let pending: Promise<void> = Promise.resolve();
createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line) as { send?: string; to?: string; port?: number; echo?: string };
  pending = pending.then(
    () =>
      new Promise<void>((resolve) => {
        if (cmd.echo !== undefined) {
          process.stdout.write(JSON.stringify({ echo: cmd.echo }) + '\n');
          return resolve();
        }
        // Errors (e.g. ENOBUFS in a flood) cost that datagram only.
        socket.send(Buffer.from(cmd.send ?? '', 'hex'), cmd.port!, cmd.to!, () => resolve());
      }),
  );
});
