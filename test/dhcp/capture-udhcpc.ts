/**
 * One-off: records what busybox udhcpc sends through one lease's life, as golden fixtures for
 * the RFC 2131 state tests (test/dhcp/rfc2131.test.ts).
 *
 *   node --import tsx test/dhcp/capture-udhcpc.ts
 *
 * Our server runs in full mode in a private namespace, udhcpc in a client namespace on its
 * bridge; tshark on the bridge prints the UDP payload of every packet to port 67. udhcpc gets
 * a lease (DISCOVER, REQUEST in SELECTING), renews on SIGUSR1 (REQUEST in RENEWING, unicast
 * from ciaddr) and releases on SIGUSR2 (RELEASE). Written to test/dhcp/fixtures/udhcpc-*.bin;
 * the namespaces are deleted afterwards (also on failure).
 */
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { MessageType, decodeMessage, messageType, serverId } from '../../server/dhcp/codec.ts';
import { createSegment, stopChild } from '../../server/lab/netns.ts';
import { waitForOutput } from '../../server/lab/services.ts';
import { addClientNamespace, DhcpChild } from './lab.ts';

const UDHCPC_MAC = '02:00:00:00:0c:01';
const NAMES = ['udhcpc-discover', 'udhcpc-request-selecting', 'udhcpc-request-renewing', 'udhcpc-release'];

const work = await mkdtemp(join(tmpdir(), 'dhcp-capture-udhcpc-'));
const segment = await createSegment();
try {
  const script = join(work, 'udhcpc.sh');
  await writeFile(script, '#!/bin/sh\n[ "$1" = bound ] || [ "$1" = renew ] && busybox ip addr replace "$ip/24" dev "$interface" && echo "$1 $ip"\nexit 0\n');
  await chmod(script, 0o755);
  const s = segment.subnet;
  const server = await DhcpChild.start(segment, {
    server: { address: segment.serverIp, stateDir: join(work, 'state'), dhcp: { mode: 'full', pool: { start: `${s}.100`, end: `${s}.110` } } },
    images: { deb: { source: 'docker:debian:12' } },
    machines: { [UDHCPC_MAC]: {} },
  });
  const client = await addClientNamespace(segment, { mac: UDHCPC_MAC });
  const tshark = segment.spawn('tshark', ['-i', segment.bridge, '-l', '-n', '-f', 'udp dst port 67', '-T', 'fields', '-e', 'udp.payload']);
  const payloads: Buffer[] = [];
  let wake = () => {};
  createInterface({ input: tshark.stdout! }).on('line', (line) => {
    payloads.push(Buffer.from(line.trim().replace(/:/g, ''), 'hex'));
    wake();
  });
  const until = (count: number) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${payloads.length} packets`)), 20_000);
      wake = () => payloads.length >= count && (clearTimeout(timer), resolve());
      wake();
    });
  // "Capturing on" comes before the capture really runs: probe (a short junk datagram the
  // server drops) until one is seen, then keep only what udhcpc sends.
  await waitForOutput(tshark, /Capturing on/, 20_000);
  for (let seen = false; !seen; ) {
    const send = "const s=require('dgram').createSocket('udp4');s.bind(()=>{s.setBroadcast(true);s.send('probe',67,'255.255.255.255',()=>s.close())})";
    await client.exec('node', ['-e', send]);
    seen = await until(1).then(() => true, () => false);
  }
  payloads.splice(0);
  const udhcpc = client.spawn('busybox', ['udhcpc', '-i', client.ifname, '-f', '-t', '5', '-T', '1', '-s', script]);
  await waitForOutput(udhcpc, /bound \S+/, 20_000);
  udhcpc.kill('SIGUSR1');
  await waitForOutput(udhcpc, /renew \S+/, 20_000);
  udhcpc.kill('SIGUSR2');
  await until(NAMES.length);
  await stopChild(udhcpc, 1000);
  await stopChild(tshark, 1000);
  await server.stop();
  // tshark does not always print them in the order sent: name them by what they are.
  const named = new Map<string, Buffer>();
  for (const bytes of payloads) {
    const decoded = decodeMessage(bytes);
    if (!decoded.ok) continue;
    const type = messageType(decoded.message);
    const name =
      type === MessageType.DISCOVER ? 'udhcpc-discover'
      : type === MessageType.RELEASE ? 'udhcpc-release'
      : type === MessageType.REQUEST ? (serverId(decoded.message) ? 'udhcpc-request-selecting' : 'udhcpc-request-renewing')
      : undefined;
    if (name) named.set(name, bytes);
  }
  for (const name of NAMES) {
    const bytes = named.get(name);
    if (!bytes) throw new Error(`no ${name} captured`);
    const file = join(import.meta.dirname, 'fixtures', `${name}.bin`);
    await writeFile(file, bytes);
    process.stdout.write(`${name}: ${bytes.length} bytes -> ${file}\n`);
  }
  await client.destroy();
} finally {
  await segment.destroy();
  await rm(work, { recursive: true, force: true });
}
