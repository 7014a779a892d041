import { Option, type Command } from 'commander';
import { withCommonOptions, type CommonOptions } from './common.ts';

export interface DoctorOptions extends CommonOptions {
  interface?: string;
  json?: boolean;
  wait: number | string;
}

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
    .action(async (options: DoctorOptions) => (await import('./actions/doctor.ts')).runDoctorCommand(options));
}
