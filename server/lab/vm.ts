import { copyFile, mkdir, open, type FileHandle } from 'node:fs/promises';
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { join } from 'node:path';
import { ConsoleText } from './console-text.ts';
import { stopChild, type Segment } from './netns.ts';

export interface VmOptions {
  name: string;
  mac: string;
  /**
   * x86_64 (default) or aarch64: QEMU's `virt` board with Debian's AAVMF (UEFI) firmware, serial
   * console ttyAMA0. aarch64 boots uefi-pxe (default) or uefi-http only: it has no BIOS and no NIC ROM.
   */
  arch?: 'x86_64' | 'aarch64';
  /** virtio-net (default, fast link-up) or e1000 (what many real NICs look like). */
  nic?: 'virtio' | 'e1000';
  memoryMiB?: number;
  /**
   * bios: SeaBIOS + the NIC's iPXE ROM (QEMU's default).
   * uefi: OVMF + the NIC's iPXE EFI ROM. uefi-pxe: OVMF's own PXE client, NIC ROM disabled,
   * so the firmware does real PXE (DHCP arch 7 -> TFTP). uefi-http: OVMF's HTTP Boot client.
   */
  firmware?: 'bios' | 'uefi' | 'uefi-pxe' | 'uefi-http';
  /** bios/uefi: this option ROM instead of QEMU's (e.g. Debian 13's pxe-virtio.rom, a newer iPXE). */
  nicRom?: string;
  /** Direct kernel boot (no PXE): kernel, initrd and command line. */
  direct?: { kernel: string; initrd: string; append: string };
  /** Raw disk image files attached as virtio disks (/dev/vda, /dev/vdb ...), e.g. for `disk:` machines. */
  disks?: string[];
  /** Where the timestamped serial log goes. */
  logDir: string;
  /** Also copy the console here as it arrives (e.g. process.stdout for `netboot vm`). */
  echo?: NodeJS.WritableStream;
  /**
   * Without a lab segment: QEMU's user-mode network, whose built-in DHCP hands iPXE this
   * script URL (e.g. http://10.0.2.2:8080/boot.ipxe; 10.0.2.2 is the host).
   */
  userNetBootUrl?: string;
}

const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
/** Debian's qemu-efi-aarch64: 64 MiB pflash images, as the virt board wants them. */
const AAVMF_CODE = '/usr/share/AAVMF/AAVMF_CODE.fd';
const AAVMF_VARS = '/usr/share/AAVMF/AAVMF_VARS.fd';

/**
 * A QEMU VM (TCG: nested KVM is not reliable here) on a tap of a lab segment. Its serial
 * console (with -nographic, SeaBIOS/iPXE screen text too) is kept in memory for waitFor()
 * and written to `<logDir>/<name>.log` with a timestamp per line.
 */
export class Vm {
  readonly logPath: string;
  #child: ChildProcess | null = null;
  #log: FileHandle | null = null;
  #console = new ConsoleText();
  #partial = '';
  #started = 0;
  #waiters = new Set<() => void>();
  #exit: Promise<number | null> | null = null;

  constructor(
    /** The lab segment the VM's tap joins; null for QEMU user-mode networking. */
    private readonly segment: Segment | null,
    readonly options: VmOptions,
  ) {
    this.logPath = join(options.logDir, `${options.name}.log`);
  }

  /** Everything the console printed so far. */
  get console(): string {
    return this.#console.raw;
  }

  get exited(): Promise<number | null> {
    return this.#exit ?? Promise.resolve(null);
  }

  async start(): Promise<void> {
    const { options, segment } = this;
    await mkdir(options.logDir, { recursive: true });
    const netdev = segment
      ? `tap,id=n0,ifname=${await segment.addTap(`tap-${options.name}`.slice(0, 15))},script=no,downscript=no`
      : `user,id=n0${options.userNetBootUrl ? `,bootfile=${options.userNetBootUrl}` : ''}`;
    const args = await this.#qemuArgs(netdev);
    const qemu = `qemu-system-${options.arch ?? 'x86_64'}`;
    this.#log = await open(this.logPath, 'w');
    await this.#log.write(`# ${qemu} ${args.join(' ')}\n`);
    this.#started = Date.now();
    const stdio: SpawnOptions = { stdio: ['ignore', 'pipe', 'pipe'] };
    const child = segment ? segment.spawn(qemu, args, stdio) : spawn(qemu, args, stdio);
    this.#child = child;
    this.#exit = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    child.stdout!.on('data', (chunk: Buffer) => this.#onOutput(chunk.toString('latin1')));
    child.stderr!.on('data', (chunk: Buffer) => this.#onOutput(chunk.toString('latin1')));
    child.once('exit', () => this.#wake());
  }

  async #qemuArgs(netdev: string): Promise<string[]> {
    const { options } = this;
    const arm = options.arch === 'aarch64';
    const firmware = options.firmware ?? (arm ? 'uefi-pxe' : 'bios');
    if (arm && firmware !== 'uefi-pxe' && firmware !== 'uefi-http' && !options.direct) {
      throw new Error(`${options.name}: an aarch64 VM boots through AAVMF's own PXE or HTTP Boot (firmware uefi-pxe or uefi-http), not ${firmware}`);
    }
    const nicModel = options.nic === 'e1000' ? 'e1000' : 'virtio-net-pci';
    const nic = [`${nicModel}`, 'netdev=n0', `mac=${options.mac}`];
    if (firmware === 'uefi-pxe' || firmware === 'uefi-http') nic.push('romfile=', 'bootindex=1');
    else if (options.nicRom) nic.push(`romfile=${options.nicRom}`);
    const args = [
      // cortex-a72, not max: max emulates pointer authentication, which makes TCG several times slower.
      ...(arm ? ['-machine', 'virt', '-cpu', 'cortex-a72'] : []),
      '-accel', 'tcg',
      '-m', String(options.memoryMiB ?? 1024),
      '-nographic',
      '-no-reboot',
      '-netdev', netdev,
      '-device', nic.join(','),
    ];
    if (firmware !== 'bios' && !(arm && options.direct)) {
      const vars = join(options.logDir, `${options.name}-${arm ? 'AAVMF' : 'OVMF'}_VARS.fd`);
      await copyFile(arm ? AAVMF_VARS : OVMF_VARS, vars);
      args.push('-drive', `if=pflash,format=raw,readonly=on,file=${arm ? AAVMF_CODE : OVMF_CODE}`, '-drive', `if=pflash,format=raw,file=${vars}`);
    }
    if (firmware === 'uefi-http') {
      args.push('-fw_cfg', 'name=opt/org.tianocore/IPv4PXESupport,string=n', '-fw_cfg', 'name=opt/org.tianocore/IPv6PXESupport,string=n');
    }
    for (const file of options.disks ?? []) args.push('-drive', `file=${file},format=raw,if=virtio`);
    if (options.direct) {
      args.push('-kernel', options.direct.kernel, '-initrd', options.direct.initrd, '-append', options.direct.append);
    } else if (firmware === 'bios') {
      args.push('-boot', 'n');
    }
    return args;
  }

  #onOutput(text: string): void {
    this.#console.append(text);
    this.options.echo?.write(text);
    const lines = (this.#partial + text).split(/\r?\n/);
    this.#partial = lines.pop() ?? '';
    const elapsed = ((Date.now() - this.#started) / 1000).toFixed(2).padStart(7);
    const stamped = lines.map((line) => `[${elapsed}] ${stripAnsi(line)}\n`).join('');
    if (stamped) void this.#log?.write(stamped);
    this.#wake();
  }

  #wake(): void {
    for (const waiter of this.#waiters) waiter();
  }

  /**
   * Resolves with the first match of `pattern` in the console (kernel records that split a
   * userspace line do not hide it); rejects on timeout or VM exit.
   */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const match = this.#console.find(pattern);
        if (match) return finish(() => resolve(match));
        if (this.#child && (this.#child.exitCode !== null || this.#child.signalCode !== null)) {
          finish(() => reject(new VmError(`${this.options.name} exited before printing ${pattern}`, this)));
        }
      };
      const timer = setTimeout(() => finish(() => reject(new VmError(`${this.options.name}: no ${pattern} within ${timeoutMs / 1000} s`, this, 'timeout'))), timeoutMs);
      const finish = (settle: () => void) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        settle();
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** The last `count` console lines, for error messages. */
  tail(count = 25): string {
    return stripAnsi(this.#console.raw).split(/\r?\n/).slice(-count).join('\n');
  }

  async stop(): Promise<void> {
    if (this.#child) await stopChild(this.#child, 2000);
    await this.#log?.close();
    this.#log = null;
  }
}

export class VmError extends Error {
  /** `timeout`: the VM was still running when the wait ended (`netboot vm` exits 5 for it). */
  readonly kind: 'timeout' | 'exited';
  constructor(message: string, vm: Vm, kind: 'timeout' | 'exited' = 'exited') {
    super(`${message}\n--- last console lines (full log: ${vm.logPath}) ---\n${vm.tail()}`);
    this.name = 'VmError';
    this.kind = kind;
  }
}

function stripAnsi(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc/g, '');
}
