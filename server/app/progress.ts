import type { BuildProgress } from '../images/cache.ts';
import type { Logger } from '../log.ts';

/**
 * Shows image build progress: one rewritten status line on a terminal (phase, bytes, rate,
 * ETA), structured log lines otherwise (at most one per phase change or every 5 s).
 */
export function progressReporter(log: Logger, tty = process.stderr.isTTY === true): (p: BuildProgress) => void {
  let lastPhase = '';
  let lastLog = 0;
  return (p) => {
    const changed = p.phase !== lastPhase;
    lastPhase = p.phase;
    if (tty) {
      const line = `${p.image}: ${p.phase.padEnd(8)} ${formatBytes(p.bytes)}${p.totalBytes ? ` / ${formatBytes(p.totalBytes)}` : ''}${
        p.rate ? `  ${formatBytes(p.rate)}/s` : ''
      }${eta(p)}`;
      process.stderr.write(`\r\x1b[2K${line}${p.phase === 'done' ? '\n' : ''}`);
      return;
    }
    const now = Date.now();
    if (changed || now - lastLog >= 5000 || p.phase === 'done') {
      lastLog = now;
      log.info({ phase: 'build', image: p.image, step: p.phase, bytes: p.bytes, totalBytes: p.totalBytes, rate: p.rate && Math.round(p.rate) }, 'image build progress');
    }
  };
}

function eta(p: BuildProgress): string {
  if (!p.totalBytes || !p.rate || p.bytes >= p.totalBytes) return '';
  const seconds = Math.round((p.totalBytes - p.bytes) / p.rate);
  return `  ETA ${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}
