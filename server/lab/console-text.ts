/**
 * A kernel log record as the serial console prints it: "[   46.051396] cdrom: ...\n".
 * The kernel writes each record whole, but between the chunks of a userspace write to
 * /dev/console, so a record can land in the middle of a userspace line.
 */
const KERNEL_RECORD = /\[\s*\d+\.\d{6}\] [^\n]*\n/g;

/** The console with every complete kernel record lifted out, so userspace lines read whole again. */
export function withoutKernelRecords(console: string): string {
  return console.replace(KERNEL_RECORD, '');
}

/**
 * A VM's console as it arrives, kept twice: as printed, and with kernel records lifted out.
 * A record never spans a newline except its last character, so text up to the last newline
 * can be cleaned once and kept; only the unfinished line is cleaned again on each read.
 */
export class ConsoleText {
  #raw = '';
  #cleanedLines = '';
  #unfinished = '';

  append(text: string): void {
    this.#raw += text;
    const pending = this.#unfinished + text;
    const end = pending.lastIndexOf('\n') + 1;
    this.#cleanedLines += withoutKernelRecords(pending.slice(0, end));
    this.#unfinished = pending.slice(end);
  }

  get raw(): string {
    return this.#raw;
  }

  /** Userspace lines read whole: a marker split by "[ 46.05] cdrom: ..." is one line here. */
  get userspace(): string {
    return this.#cleanedLines + this.#unfinished;
  }

  /** The first match of `pattern` as printed, or else with kernel records lifted out. */
  find(pattern: RegExp): RegExpExecArray | null {
    const once = new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
    return once.exec(this.#raw) ?? once.exec(this.userspace);
  }
}
