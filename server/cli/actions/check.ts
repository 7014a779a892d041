import { checkHostTools, installCommand } from '../../host-tools.ts';
import type { CheckOptions } from '../check.ts';
import { EXIT } from '../common.ts';
import { loadConfigOrExit } from '../setup.ts';

export async function runCheck(options: CheckOptions): Promise<void> {
  const config = loadConfigOrExit(options.config);
  const out = process.stdout;
  out.write(`config ${config.file}: OK\n`);
  out.write(`  images:   ${[...config.images.values()].map((i) => `${i.name} (${i.source})`).join(', ') || 'none'}\n`);
  out.write(`  machines: ${config.machines.size} known; unknown MACs: ${config.defaults.unknown}\n`);
  out.write(`  dhcp: ${config.server.dhcp.mode}, tftp: ${config.server.tftp.enabled ? `port ${config.server.tftp.port}` : 'off'}, http: ${config.server.address}:${config.server.httpPort}\n`);

  const tools = (await checkHostTools()).filter((tool) => !options.runtimeOnly || tool.need === 'runtime');
  out.write('host tools:\n');
  for (const tool of tools) {
    out.write(`  ${tool.found ? 'ok     ' : 'MISSING'} ${tool.name.padEnd(34)} ${tool.debianPackage.padEnd(18)} ${tool.purpose}\n`);
  }
  const missing = tools.filter((tool) => !tool.found);
  const command = installCommand(missing);
  if (command) {
    out.write(`\n${missing.length} missing; install with:\n  ${command}\n(or: scripts/setup-host.sh)\n`);
    process.exitCode = EXIT.missingTools;
  }
}
