import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createSegment, stopChild, type Segment } from '../lab/netns.ts';

const here = dirname(fileURLToPath(import.meta.url));
const REPO = join(here, '..', '..');

export interface LabEvent {
  mac: string;
  phase: string;
  t: number;
  detail: string;
}

/** A test namespace with a DHCP server (busybox udhcpd) and the stand-in HTTP server. */
export interface BootLab {
  segment: Segment;
  serverUrl: string;
  events: LabEvent[];
  /** Every GET the server answered, with the body bytes it sent (counted by the server). */
  served: Served[];
  boot(options: VmOptions): Promise<VmResult>;
  destroy(): Promise<void>;
}

export interface VmOptions {
  kernel: string;
  initrd: string;
  append: string;
  nic: 'virtio-net-pci' | 'e1000';
  mac: string;
  memoryMb?: number;
  /** Resolves the boot when this text appears on the console (else waits for QEMU to exit). */
  until?: RegExp;
  /** Typed on the serial console, each once, when its `when` first appears in the output. */
  type?: { when: RegExp; text: string }[];
  timeoutMs?: number;
  /** Raw disk image files, attached as virtio disks (/dev/vda, /dev/vdb ...). */
  disks?: string[];
}

export interface Served {
  path: string;
  bytes: number;
}

export interface VmResult {
  console: string;
  exitCode: number | null;
  matched: boolean;
}

const PORT = 8080;

export async function createBootLab(routes: Record<string, { file: string; truncate?: number }>): Promise<BootLab> {
  const segment = await createSegment();
  const work = await mkdtemp(join(tmpdir(), 'netboot-initramfs-lab-'));
  const events: LabEvent[] = [];
  const served: Served[] = [];
  const children: ChildProcess[] = [];
  let taps = 0;
  try {
    await writeFile(join(work, 'routes.json'), JSON.stringify(routes));
    await writeFile(
      join(work, 'udhcpd.conf'),
      [
        `start ${segment.subnet}.100`,
        `end ${segment.subnet}.150`,
        'interface br0',
        `lease_file ${join(work, 'udhcpd.leases')}`,
        `pidfile ${join(work, 'udhcpd.pid')}`,
        'option subnet 255.255.255.0',
        'option lease 600',
        '',
      ].join('\n'),
    );
    await writeFile(join(work, 'udhcpd.leases'), '');
    children.push(segment.spawn('busybox', ['udhcpd', '-f', join(work, 'udhcpd.conf')]));

    const server = segment.spawn('node', ['--import', 'tsx', join(here, 'lab-server.ts'), segment.serverIp, String(PORT), join(work, 'routes.json')], {
      cwd: REPO,
    });
    children.push(server);
    await new Promise<void>((resolve, reject) => {
      let buffer = '';
      const timer = setTimeout(() => reject(new Error('lab server did not start')), 20_000);
      server.stderr?.on('data', (d: Buffer) => process.stderr.write(d));
      server.stdout?.on('data', (d: Buffer) => {
        buffer += d.toString();
        let newline: number;
        while ((newline = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.startsWith('LISTENING')) {
            clearTimeout(timer);
            resolve();
          }
          const sent = /^SERVED (\S+) (\d+)$/.exec(line);
          if (sent) served.push({ path: sent[1]!, bytes: Number(sent[2]) });
          const match = /^EVENT (\S+) (.*)$/.exec(line);
          if (match) {
            const body = JSON.parse(match[2]!) as Omit<LabEvent, 'mac'>;
            events.push({ mac: match[1]!, ...body });
          }
        }
      });
      server.once('exit', (code) => reject(new Error(`lab server exited with ${code}`)));
    });
  } catch (err) {
    await segment.destroy();
    await rm(work, { recursive: true, force: true });
    throw err;
  }

  return {
    segment,
    serverUrl: `http://${segment.serverIp}:${PORT}`,
    events,
    served,
    async boot(options) {
      const tap = await segment.addTap(`tap${taps++}`);
      const args = [
        '-accel', 'tcg',
        '-m', String(options.memoryMb ?? 1024),
        '-nographic', '-monitor', 'none', '-no-reboot',
        '-kernel', options.kernel,
        '-initrd', options.initrd,
        '-append', options.append,
        '-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`,
        '-device', `${options.nic},netdev=n0,mac=${options.mac},romfile=`,
        ...(options.disks ?? []).flatMap((file) => ['-drive', `file=${file},format=raw,if=virtio`]),
      ];
      const qemu = segment.spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
      let output = '';
      const pending = [...(options.type ?? [])];
      try {
        return await new Promise<VmResult>((resolve) => {
          const timer = setTimeout(() => resolve({ console: output, exitCode: null, matched: false }), options.timeoutMs ?? 150_000);
          const onData = (d: Buffer) => {
            output += d.toString('utf8');
            while (pending[0] && pending[0].when.test(output)) qemu.stdin?.write(pending.shift()!.text);
            if (options.until && options.until.test(output)) {
              clearTimeout(timer);
              resolve({ console: output, exitCode: null, matched: true });
            }
          };
          qemu.stdout?.on('data', onData);
          qemu.stderr?.on('data', onData);
          qemu.once('exit', (code) => {
            clearTimeout(timer);
            resolve({ console: output, exitCode: code, matched: options.until ? options.until.test(output) : true });
          });
        });
      } finally {
        await stopChild(qemu, 2000);
      }
    },
    async destroy() {
      for (const child of children) await stopChild(child, 2000).catch(() => undefined);
      await segment.destroy();
      await rm(work, { recursive: true, force: true });
    },
  };
}

/** Events for one MAC (hyphen form), phases only. */
export function phasesOf(events: readonly LabEvent[], macHyphens: string): string[] {
  return events.filter((event) => event.mac === macHyphens).map((event) => event.phase);
}
