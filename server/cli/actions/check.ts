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
    const status = tool.found ? 'ok     ' : tool.optional ? 'absent ' : 'MISSING';
    out.write(`  ${status} ${tool.name.padEnd(34)} ${tool.debianPackage.padEnd(18)} ${tool.purpose}${tool.optional ? ' (optional)' : ''}\n`);
  }
  const missing = tools.filter((tool) => !tool.found && !tool.optional);
  const command = installCommand(missing);
  if (command) {
    out.write(`\n${missing.length} missing; install with:\n  ${command}\n(or: scripts/setup-host.sh)\n`);
    process.exitCode = EXIT.missingTools;
  }
  const absent = installCommand(tools.filter((tool) => !tool.found && tool.optional));
  if (absent) out.write(`\noptional tools absent (nothing fails without them); install with:\n  ${absent}\n`);
}
