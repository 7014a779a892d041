import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { Segment } from './netns.ts';

/**
 * Router advertisements on the segment, from a real router daemon (dnsmasq in RA-only mode
 * binds no DHCP port; it advertises a ULA prefix). iPXE waits for IPv6 autoconfiguration when
 * no RA arrives (Debian 12's iPXE ~16 s, Debian 13's ~6 s) unless netboot answers its
 * solicitation (server.ipv6RouterAdvert: auto); segments without this daemon test that.
 */
export async function startRouterAdvertisements(segment: Segment): Promise<ChildProcess> {
  const prefix = `fd77:${segment.subnet.split('.')[2]}::`;
  await segment.exec('ip', ['-6', 'addr', 'add', `${prefix}1/64`, 'dev', segment.bridge, 'nodad']);
  return startDnsmasq(segment, [`--enable-ra`, `--dhcp-range=${prefix},ra-only,64`]);
}

/** A "lab DHCP server" handing out addresses on the segment, like the one a real lab already has. */
export async function startLabDhcp(
  segment: Segment,
  options: { first?: number; last?: number; /** Bootfile for iPXE clients, as a lab's DHCP pointing at netboot would give. */ bootUrl?: string } = {},
): Promise<ChildProcess> {
  const range = `${segment.subnet}.${options.first ?? 100},${segment.subnet}.${options.last ?? 199},255.255.255.0,1h`;
  const boot = options.bootUrl ? ['--dhcp-userclass=set:ipxe,iPXE', `--dhcp-boot=tag:ipxe,${options.bootUrl}`] : [];
  return startDnsmasq(segment, [`--dhcp-range=${range}`, '--dhcp-leasefile=/dev/null', ...boot]);
}

async function startDnsmasq(segment: Segment, args: string[]): Promise<ChildProcess> {
  const child = segment.spawn('dnsmasq', [
    '--keep-in-foreground',
    '--no-resolv',
    '--no-hosts',
    '--port=0',
    '--conf-file=/dev/null',
    '--pid-file=',
    '--log-facility=-',
    `--interface=${segment.bridge}`,
    '--bind-interfaces',
    ...args,
  ]);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  // dnsmasq logs "started" once it is listening; an early exit is a failure.
  await Promise.race([
    waitForOutput(child, /started, version/),
    once(child, 'exit').then(([code]) => {
      throw new Error(`dnsmasq ${args.join(' ')} exited with ${code}: ${stderr.trim()}`);
    }),
  ]);
  return child;
}

export function waitForOutput(child: ChildProcess, pattern: RegExp, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out waiting for ${pattern} (saw: ${seen.slice(-500)})`));
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      seen += chunk.toString();
      const match = pattern.exec(seen);
      if (match) {
        cleanup();
        resolve(match[0]);
      }
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
  });
}
