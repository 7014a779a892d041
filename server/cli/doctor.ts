import { Option, type Command } from 'commander';
import { blocksBoot, formatFindings } from '../doctor/finding.ts';
import { runDoctor } from '../doctor/run.ts';
import { EXIT, loadConfigOrExit, withCommonOptions, type CommonOptions } from './common.ts';

export function registerDoctor(program: Command): void {
  withCommonOptions(program.command('doctor'))
    .description(
      'check this host and its network before the first boot: server.address, ports, other DHCP servers, IPv6 router ' +
        'advertisements, packet filter, rp_filter, MTU, image sources and builds, container networking. Each finding comes ' +
        'with its fix. Sends exactly one DHCPDISCOVER (from a random locally administered MAC, 02:6e:62:xx:xx:xx) and, ' +
        'with rdisc6 installed, one IPv6 Router Solicitation on the interface; nothing else leaves the host. ' +
        'Exit 0 when nothing blocks a boot, 1 otherwise.',
    )
    .option('-i, --interface <name>', 'the interface facing the machines (default: the one holding server.address)')
    .option('--json', 'print the findings as JSON')
    .addOption(new Option('--wait <ms>', 'how long to listen for DHCP offers and router advertisements (dnsmasq pings an address for 3 s before it offers it)').default('5000').argParser((v) => Number.parseInt(v, 10)))
    .action(async (options: CommonOptions & { interface?: string; json?: boolean; wait: number | string }) => {
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
    });
}
