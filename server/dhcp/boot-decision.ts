import type { Config, Machine } from '../config/types.ts';
import { bootingMachine, planBoot } from '../boot/plan.ts';
import { ARM64_EFI_BINARY } from '../ipxe-binaries.ts';

/**
 * What a DHCP client is told to boot: the one place that decides, from the client's MAC,
 * architecture (option 93), user class (77) and vendor class (60) plus the config.
 *
 * Unknown MACs follow `defaults.unknown`: `deny` is never answered (several servers can share
 * a LAN); `local` gets no boot file: in proxy mode no answer at all (the firmware falls back to
 * its next boot entry, usually the local disk), in full mode an address without boot info.
 * `menu` and `boot-default` boot iPXE like a known machine; the HTTP side shows the menu.
 */

/** RFC 4578 / IANA processor architecture types. */
export const Arch = {
  BIOS: 0,
  EFI_IA32: 6,
  EFI_X64: 7,
  EFI_BC: 9,
  EFI_ARM32: 10,
  EFI_ARM64: 11,
  EFI_X64_HTTP: 16,
  EFI_ARM64_HTTP: 19,
} as const;

export interface ClientFacts {
  /** Canonical aa:bb:cc:dd:ee:ff */
  mac: string;
  /** First entry of option 93; undefined when the client sent none (a pre-RFC 4578 BIOS PXE ROM). */
  arch: number | undefined;
  /** Option 77 class names (iPXE sends "iPXE"). */
  userClass: string[];
  /** Option 60, e.g. "PXEClient:Arch:00007:UNDI:003016" or "HTTPClient:Arch:00016:..." */
  vendorClass: string | undefined;
}

export type IgnoreReason =
  | 'unknown-mac-deny'
  | 'unknown-mac-local'
  /** No longer produced (arm64 gets ipxe-arm64.efi); kept because log levels still name it. */
  | 'arm64-no-ipxe'
  | 'unsupported-arch'
  | 'tftp-disabled'
  | 'not-a-boot-client';

export type BootDecision =
  | {
      kind: 'boot';
      /** The `file` field (and option 67): a TFTP path or an http:// URL. */
      bootfile: string;
      /** siaddr: the TFTP server. */
      nextServer: string;
      /** HTTP Boot: the reply must carry option 60 "HTTPClient" or the firmware gives up. */
      httpClientEcho: boolean;
      /** What the file is: an iPXE binary to load, or the iPXE script (client already runs iPXE). */
      stage: 'ipxe-binary' | 'ipxe-script';
      /** The machine entry (a synthetic one for an unknown MAC under boot-default/menu); null for menu without images. */
      machine: Machine | null;
    }
  | { kind: 'ignore'; reason: IgnoreReason; detail: string };

export type ClientKind = 'ipxe' | 'pxe' | 'http' | 'plain';

/** iPXE (user class), firmware PXE (vendor class PXEClient), UEFI HTTP Boot (HTTPClient), or anything else. */
export function clientKind(facts: Pick<ClientFacts, 'userClass' | 'vendorClass'>): ClientKind {
  if (facts.userClass.includes('iPXE')) return 'ipxe';
  if (facts.vendorClass?.startsWith('HTTPClient')) return 'http';
  if (facts.vendorClass?.startsWith('PXEClient')) return 'pxe';
  return 'plain';
}

/**
 * The iPXE binary for a firmware architecture, or null when there is none: BIOS gets
 * undionly.kpxe (it drives the NIC through the firmware's UNDI), x86-64 UEFI the configured
 * efiBinary (snponly.efi uses the firmware's own NIC driver), arm64 UEFI Debian's ipxe-arm64.efi
 * (the only arm64 build Debian ships). Arch 6 (IA32 UEFI) gets the x86-64 binary too: Debian
 * ships no 32-bit EFI build, so that is the only one that can work (firmware that reports 6 but
 * runs in 64-bit mode). ARM32 UEFI has no binary.
 */
export function ipxeBinaryFor(arch: number, efiBinary: string): string | null {
  switch (arch) {
    case Arch.BIOS:
      return 'undionly.kpxe';
    case Arch.EFI_IA32:
    case Arch.EFI_X64:
    case Arch.EFI_BC:
    case Arch.EFI_X64_HTTP:
      return efiBinary;
    case Arch.EFI_ARM64:
    case Arch.EFI_ARM64_HTTP:
      return ARM64_EFI_BINARY;
    default:
      return null;
  }
}

export function decideBoot(facts: ClientFacts, config: Config): BootDecision {
  const target = planBoot(config, facts.mac);
  if (target.kind === 'deny') {
    return { kind: 'ignore', reason: 'unknown-mac-deny', detail: `unknown MAC ${facts.mac} and defaults.unknown is deny` };
  }
  if (target.kind === 'local') {
    return { kind: 'ignore', reason: 'unknown-mac-local', detail: `unknown MAC ${facts.mac} and defaults.unknown is local: left to boot from its disk` };
  }
  const machine = bootingMachine(target);
  const { address, httpPort } = config.server;
  const base = `http://${address}:${httpPort}`;
  const boot = (bootfile: string, stage: 'ipxe-binary' | 'ipxe-script', httpClientEcho = false): BootDecision => ({
    kind: 'boot',
    bootfile,
    nextServer: address,
    httpClientEcho,
    stage,
    machine,
  });

  const kind = clientKind(facts);
  if (kind === 'plain') return { kind: 'ignore', reason: 'not-a-boot-client', detail: 'neither PXEClient, HTTPClient nor iPXE' };
  // iPXE already runs: it fetches the script over HTTP whatever the architecture.
  if (kind === 'ipxe') return boot(`${base}/boot.ipxe`, 'ipxe-script');

  // No option 93: a pre-RFC 4578 BIOS PXE ROM, or an HTTP Boot client (only UEFI has those).
  const arch = facts.arch ?? (kind === 'http' ? Arch.EFI_X64_HTTP : Arch.BIOS);
  const binary = ipxeBinaryFor(arch, config.server.dhcp.efiBinary);
  if (!binary) return { kind: 'ignore', reason: 'unsupported-arch', detail: `arch ${arch} has no iPXE binary here` };
  // UEFI HTTP Boot (16, 19; or an HTTPClient without option 93): the binary by URL, over HTTP.
  if (arch === Arch.EFI_X64_HTTP || arch === Arch.EFI_ARM64_HTTP || kind === 'http') {
    return boot(`${base}/ipxe/${binary}`, 'ipxe-binary', true);
  }
  if (!config.server.tftp.enabled) {
    return { kind: 'ignore', reason: 'tftp-disabled', detail: `arch ${arch} needs TFTP for its iPXE binary and server.tftp.enabled is false` };
  }
  return boot(binary, 'ipxe-binary');
}
