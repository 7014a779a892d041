import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { nativeSendfileStatus } from '../../server/http/native-sendfile.ts';
import { stopChild } from '../lab/netns.ts';

const run = promisify(execFile);
const REPO = join(import.meta.dirname, '../..');
const asRoot = process.getuid?.() === 0;
/** CAP_SYS_NICE (bit 23) in this process's effective set: it may raise a priority whatever RLIMIT_NICE says. */
function hasCapSysNice(): boolean {
  const effective = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  return effective !== undefined && ((BigInt(`0x${effective}`) >> 23n) & 1n) === 1n;
}
const mayRaise = hasCapSysNice();

interface Probe {
  priority: { raised: boolean; controlNice?: number; bulkNice?: number; nice?: number; reason?: string };
  mainThread: number;
  tftpThreads: number[];
  nbdThreads: number[];
  sendfileThreads: number[];
  sendfileBytes: number | null;
  imageTools: { tar2sqfs: number; rdsquashfs: number; readBack: string };
  nested: number;
  bulkChild: number;
  controlChild: number;
}

/** Runs test/threads/priority-probe.ts in a process of its own, optionally under a wrapper (setpriv). */
async function probe(steps: number, wrapper: string[] = []): Promise<Probe> {
  const command = [...wrapper, process.execPath, '--import', 'tsx', join(REPO, 'test/threads/priority-probe.ts'), String(steps)];
  const { stdout } = await run(command[0]!, command.slice(1), { cwd: REPO });
  return JSON.parse(stdout) as Probe;
}

describe.skipIf(process.platform !== 'linux' || !nativeSendfileStatus().available)('control plane above bulk work (server/threads/priority.ts)', () => {
  it.skipIf(!mayRaise)('with CAP_SYS_NICE: the main and TFTP threads run 5 nice steps above the NBD and sendfile threads and image-build children', async () => {
    const p = await probe(5);
    const base = p.priority.bulkNice!;
    expect(p.priority).toEqual({ raised: true, controlNice: base - 5, bulkNice: base });
    expect(p.mainThread).toBe(base - 5);
    expect(p.tftpThreads.length).toBeGreaterThan(0);
    expect(new Set(p.tftpThreads)).toEqual(new Set([base - 5]));
    expect(p.nbdThreads.length).toBeGreaterThan(0);
    expect(new Set(p.nbdThreads)).toEqual(new Set([base]));
    expect(p.sendfileBytes).toBe(64 << 10);
    expect(p.sendfileThreads.length).toBeGreaterThan(0);
    expect(new Set(p.sendfileThreads)).toEqual(new Set([base]));
    expect(p.imageTools).toEqual({ tar2sqfs: base, rdsquashfs: base, readBack: 'hello' });
    expect(p.nested).toBe(base);
    expect(p.bulkChild).toBe(base);
    // A child started outside atBulkPriority inherits the control plane's (the IPv6 helper does).
    expect(p.controlChild).toBe(base - 5);
  });

  it.skipIf(!asRoot)('without the privilege (no CAP_SYS_NICE, RLIMIT_NICE 0): nothing changes and the reason names the fix', async () => {
    // Lowering a limit and dropping a capability need no privilege.
    const p = await probe(5, ['prlimit', '--nice=0:0', 'setpriv', '--bounding-set=-sys_nice']);
    expect(p.priority.raised).toBe(false);
    const base = p.priority.nice!;
    const wanted = Math.max(-20, base - 5);
    const limitNice = `${wanted < 0 ? '' : '+'}${wanted}`;
    expect(p.priority.reason).toBe(`EACCES: needs CAP_SYS_NICE or RLIMIT_NICE of at least ${20 - wanted} (systemd LimitNICE=${limitNice}, docker --ulimit nice=${20 - wanted})`);
    for (const nice of [p.mainThread, ...p.tftpThreads, ...p.nbdThreads, ...p.sendfileThreads, p.imageTools.tar2sqfs, p.imageTools.rdsquashfs, p.bulkChild, p.controlChild]) expect(nice).toBe(base);
    expect(p.sendfileBytes).toBe(64 << 10);
  });

  it('controlPlanePriority 0 turns it off', async () => {
    const p = await probe(0);
    expect(p.priority).toMatchObject({ raised: false, reason: 'server.controlPlanePriority is 0' });
    for (const nice of [p.mainThread, ...p.tftpThreads, ...p.nbdThreads, ...p.sendfileThreads, p.imageTools.tar2sqfs, p.bulkChild, p.controlChild]) expect(nice).toBe(p.priority.nice);
  });

  it.skipIf(!asRoot || !mayRaise)('netboot serve raises itself at start and says so in its log', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'netboot-priority-'));
    const config = join(dir, 'netboot.yaml');
    writeFileSync(
      config,
      `server:
  address: 127.0.0.1
  bind: 127.0.0.1
  stateDir: ${dir}/state
  cacheDir: ${dir}/cache
  dhcp: { mode: "off" }
  ipv6RouterAdvert: "off"
images: {}
machines: {}
`,
    );
    // A network namespace of its own (gone with the process): TFTP binds port 69 there, not on the host.
    const serve = spawn('unshare', ['--net', 'sh', '-c', `ip link set lo up && exec ${join(REPO, 'bin/netboot')} serve --config ${config}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    serve.stdout.on('data', (chunk: Buffer) => (log += chunk.toString()));
    try {
      await expect.poll(() => log, { timeout: 60_000 }).toMatch(/"msg":"netboot serving"/);
      const line = log.split('\n').find((l) => l.includes('"msg":"DHCP, scripts, events and TFTP run above'));
      expect(line, log).toBeDefined();
      const { controlNice, bulkNice } = JSON.parse(line!) as { controlNice: number; bulkNice: number };
      expect(controlNice).toBe(bulkNice - 5);
      // unshare and sh exec: the child's pid is node's main thread. The TFTP thread started after the raise.
      const nices = readdirSync(`/proc/${serve.pid}/task`).map((tid) => {
        const stat = readFileSync(`/proc/${serve.pid}/task/${tid}/stat`, 'utf8');
        return { tid: Number(tid), nice: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]) };
      });
      expect(nices.find((t) => t.tid === serve.pid)?.nice).toBe(controlNice);
      // The TFTP thread (started after the raise) and its helper thread.
      expect(nices.filter((t) => t.nice === controlNice).length).toBeGreaterThan(1);
    } finally {
      await stopChild(serve);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
