/**
 * Run as a process of its own by priority.test.ts (priorities are per process): raises the
 * control plane as `netboot serve` does, starts the real service threads, a sendfile job and
 * child processes, and prints the nice value each of them runs at, as JSON.
 */
import { execFile } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { nativeSendfileCounters, startNativeSend } from '../../server/http/native-sendfile.ts';
import { NbdThread } from '../../server/nbd/thread.ts';
import { dirSource } from '../../server/tftp/files.ts';
import { TftpThread } from '../../server/tftp/thread.ts';
import { atBulkPriority, raiseControlPlanePriority } from '../../server/threads/priority.ts';

const run = promisify(execFile);

/** The nice value in a /proc/.../stat line (field 19). */
const niceIn = (stat: string) => Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
const threads = () => new Map(readdirSync('/proc/self/task').map((tid) => [tid, { name: readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim(), nice: niceIn(readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')) }]));

/** The nice values of the threads `start` adds to the process. */
async function nicesOfNewThreads(start: () => Promise<unknown>): Promise<number[]> {
  const before = threads();
  await start();
  return [...threads()].filter(([tid]) => !before.has(tid)).map(([, t]) => t.nice);
}

const steps = Number(process.argv[2] ?? 5);
const priority = await raiseControlPlanePriority(steps);

const tftp = new TftpThread({ host: '127.0.0.1', port: 0, source: dirSource(tmpdir()) });
const tftpThreads = await nicesOfNewThreads(() => tftp.start());
const nbd = new NbdThread({ host: '127.0.0.1', port: 0, lookupExport: async () => null });
const nbdThreads = await nicesOfNewThreads(() => nbd.start());

const file = join(tmpdir(), `priority-probe-${process.pid}`);
writeFileSync(file, Buffer.alloc(64 << 10, 1));
const listener = createServer();
const accepted = new Promise<Socket>((resolve) => listener.once('connection', resolve));
await new Promise<void>((done) => listener.listen(0, '127.0.0.1', done));
const client = connect((listener.address() as { port: number }).port, '127.0.0.1');
client.resume();
const server = await accepted;
const fd = openSync(file, 'r');
const sent = await startNativeSend((server as unknown as { _handle: { fd: number } })._handle.fd, fd, 0, 64 << 10)?.result;
closeSync(fd);
unlinkSync(file);
// Each sendfile thread names itself when it starts running: wait until all have.
const sendfileThreadNices = () => [...threads().values()].filter((t) => t.name.startsWith('nb-sendfile')).map((t) => t.nice);
while (sendfileThreadNices().length < nativeSendfileCounters()!.threads) await new Promise((resolve) => setTimeout(resolve, 10));
const sendfileThreads = sendfileThreadNices();

const bulkChild = niceIn((await atBulkPriority(() => run('cat', ['/proc/self/stat']))).stdout);
const controlChild = niceIn((await run('cat', ['/proc/self/stat'])).stdout);
const mainThread = threads().get(String(process.pid))!.nice;

client.destroy();
server.destroy();
listener.close();
await Promise.all([tftp.stop(), nbd.stop()]);
process.stdout.write(`${JSON.stringify({ priority, mainThread, tftpThreads, nbdThreads, sendfileThreads, sendfileBytes: sent?.bytes ?? null, bulkChild, controlChild })}\n`);
