/**
 * Run as a process of its own by priority.test.ts (priorities are per process): raises the
 * control plane as `netboot serve` does, starts the real service threads, a sendfile job and
 * child processes, and prints the nice value each of them runs at, as JSON.
 */
import { execFile } from 'node:child_process';
import { chmodSync, closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { getPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { nativeSendfileCounters, startNativeSend } from '../../server/http/native-sendfile.ts';
import { readSquashfsFile } from '../../server/images/squashfs-reader.ts';
import { writeSquashfs } from '../../server/images/squashfs-writer.ts';
import { encodeHeader, type TarEntry, type TarHeader } from '../../server/images/tar-reader.ts';
import { NbdThread } from '../../server/nbd/thread.ts';
import { dirSource } from '../../server/tftp/files.ts';
import { TftpThread } from '../../server/tftp/thread.ts';
import { atBulkPriority, raiseControlPlanePriority } from '../../server/threads/priority.ts';

const run = promisify(execFile);

/** The nice value in a /proc/.../stat line (field 19). */
const niceIn = (stat: string) => Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
/** This process's threads by tid (a thread that ends while they are read is left out). */
function threads(): Map<string, { name: string; nice: number }> {
  const found = new Map<string, { name: string; nice: number }>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      found.set(tid, { name: readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim(), nice: niceIn(readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')) });
    } catch {
      /* gone */
    }
  }
  return found;
}

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
for (const deadline = Date.now() + 10_000; sendfileThreadNices().length < nativeSendfileCounters()!.threads; ) {
  if (Date.now() > deadline) throw new Error(`${nativeSendfileCounters()!.threads} sendfile threads, ${sendfileThreadNices().length} named nb-sendfile-*`);
  await new Promise((resolve) => setTimeout(resolve, 10));
}
const sendfileThreads = sendfileThreadNices();

// The image-build tools, through the code that runs them: wrappers ahead on PATH record the nice they start at.
const tools = mkdtempSync(join(tmpdir(), 'priority-probe-tools-'));
chmodSync(tools, 0o777); // tar2sqfs runs as nobody when we are root
for (const tool of ['tar2sqfs', 'rdsquashfs']) {
  writeFileSync(join(tools, tool), `#!/bin/sh\nawk '{print $19}' /proc/$$/stat > ${tools}/${tool}.nice\nexec /usr/bin/${tool} "$@"\n`, { mode: 0o755 });
}
process.env.PATH = `${tools}:${process.env.PATH}`;
const header: TarHeader = { path: 'hello', type: 'file', typeflag: '0', size: 5, mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000, linkname: '', devmajor: 0, devminor: 0, pax: {} };
async function* oneFile(): AsyncGenerator<TarEntry> {
  yield { header, raw: encodeHeader(header), body: async function* () { yield Buffer.from('hello'); } };
}
await writeSquashfs(oneFile(), join(tools, 'probe.sqfs'), { compressor: 'gzip' });
const readBack = (await readSquashfsFile(join(tools, 'probe.sqfs'), 'hello')).toString();
const imageTools = { tar2sqfs: Number(readFileSync(join(tools, 'tar2sqfs.nice'), 'utf8')), rdsquashfs: Number(readFileSync(join(tools, 'rdsquashfs.nice'), 'utf8')), readBack };
rmSync(tools, { recursive: true, force: true });

// Nested: the inner call's end must not raise the thread while the outer one still runs.
const nested = atBulkPriority(() => {
  atBulkPriority(() => undefined);
  return getPriority(0);
});

const bulkChild = niceIn((await atBulkPriority(() => run('cat', ['/proc/self/stat']))).stdout);
const controlChild = niceIn((await run('cat', ['/proc/self/stat'])).stdout);
const mainThread = threads().get(String(process.pid))!.nice;

client.destroy();
server.destroy();
listener.close();
await Promise.all([tftp.stop(), nbd.stop()]);
process.stdout.write(`${JSON.stringify({ priority, mainThread, tftpThreads, nbdThreads, sendfileThreads, sendfileBytes: sent?.bytes ?? null, imageTools, nested, bulkChild, controlChild })}\n`);
