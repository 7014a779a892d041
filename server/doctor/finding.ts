/**
 * One thing `netboot doctor` found. `fail` blocks a boot (exit 1); `warn` slows or risks it;
 * `ok` and `info` are what was checked and seen, so an admin can tell "fine" from "not checked".
 */
export type Severity = 'ok' | 'info' | 'warn' | 'fail';

export type CheckName = 'address' | 'ports' | 'dhcp' | 'ipv6-ra' | 'firewall' | 'rp_filter' | 'mtu' | 'rmem_max' | 'images' | 'container';

export interface Finding {
  check: CheckName;
  severity: Severity;
  summary: string;
  /** What to do about it (every warn and fail has one). */
  fix?: string;
  /** Supporting lines: who offered what, which rule drops, ... */
  details?: string[];
}

export const blocksBoot = (findings: readonly Finding[]): boolean => findings.some((f) => f.severity === 'fail');

const LABEL: Record<Severity, string> = { ok: 'ok  ', info: 'info', warn: 'WARN', fail: 'FAIL' };

/** The human report: one line per finding, details and fix indented under it, a verdict at the end. */
export function formatFindings(findings: readonly Finding[]): string {
  const lines: string[] = [];
  for (const f of findings) {
    lines.push(`${LABEL[f.severity]}  ${f.check.padEnd(9)}  ${f.summary}`);
    for (const d of f.details ?? []) lines.push(`                 ${d}`);
    if (f.fix) lines.push(`                 fix: ${f.fix}`);
  }
  const fails = findings.filter((f) => f.severity === 'fail').length;
  const warns = findings.filter((f) => f.severity === 'warn').length;
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  lines.push('');
  lines.push(
    fails
      ? `${plural(fails, 'problem')} block${fails === 1 ? 's' : ''} a boot; ${plural(warns, 'warning')}.`
      : `nothing blocks a boot; ${plural(warns, 'warning')}.`,
  );
  return lines.join('\n') + '\n';
}
