import { blocksBoot, formatFindings } from '../../doctor/finding.ts';
import { runDoctor } from '../../doctor/run.ts';
import { EXIT } from '../common.ts';
import type { DoctorOptions } from '../doctor.ts';
import { loadConfigOrExit } from '../setup.ts';

export async function runDoctorCommand(options: DoctorOptions): Promise<void> {
  const config = loadConfigOrExit(options.config);
  const waitMs = Number(options.wait);
  const report = await runDoctor(config, { interface: options.interface, waitMs: Number.isFinite(waitMs) && waitMs > 0 ? waitMs : 5000 });
  const blocked = blocksBoot(report.findings);
  if (options.json) {
    process.stdout.write(JSON.stringify({ ok: !blocked, ...report }, null, 2) + '\n');
  } else {
    process.stdout.write(`netboot doctor: ${report.config}, interface ${report.interface ?? '(none)'}, dhcp ${config.server.dhcp.mode}\n\n`);
    process.stdout.write(formatFindings(report.findings));
  }
  process.exitCode = blocked ? EXIT.failure : EXIT.ok;
}
