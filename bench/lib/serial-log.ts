/**
 * Reading a VM's serial log as written by server/lab/vm.ts: every line is stamped with the
 * seconds since QEMU started (`[  12.65] text`); the kernel's own `[    4.57]` stamps, when
 * present, are part of the text (its clock starts later, after firmware and downloads).
 */
export interface ConsoleLine {
  /** Seconds since the VM's QEMU process started. */
  t: number;
  text: string;
}

const STAMPED = /^\[\s*(\d+(?:\.\d+)?)\] ?(.*)$/;

/** The stamped lines of a serial log; other lines (the `# qemu-system-x86_64 …` header) are skipped. */
export function parseSerialLog(log: string): ConsoleLine[] {
  const lines: ConsoleLine[] = [];
  for (const raw of log.split(/\r?\n/)) {
    const match = STAMPED.exec(raw);
    if (match) lines.push({ t: Number(match[1]), text: match[2]! });
  }
  return lines;
}

/** When the first line matching `pattern` was printed, or null if none did. */
export function secondsTo(lines: readonly ConsoleLine[], pattern: RegExp): number | null {
  const search = new RegExp(pattern.source, pattern.flags.replace('g', '').replace('y', ''));
  return lines.find((line) => search.test(line.text))?.t ?? null;
}
