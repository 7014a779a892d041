import type { Config } from '../../config/types.ts';
import type { Boot, BootState, PhaseRecord, Timeline } from '../../events/timeline.ts';

/** One row of the fleet page. */
export interface FleetRow {
  mac: string;
  hostname: string | null;
  known: boolean;
  image: string | null;
  /** The id its last boot ran (else the image's current id). */
  imageId: string | null;
  state: BootState;
  /** While booting: the last phase seen. */
  phase: string | null;
  /** Last boot, first record to last (finished boots only). */
  durationMs: number | null;
  lastSeen: string | null;
  /** Why it is in "needs attention", or null. */
  attention: string | null;
  /** A failed boot's step and what /init said. */
  failure: { step: string; detail: string } | null;
}

export interface FleetOptions {
  /** A boot with no new record for this long is "stuck". */
  stuckAfterMs: number;
  now: number;
}

/** The image ids in force, read once per render (the store may be async). */
export type CurrentIds = ReadonlyMap<string, string | null>;

export function fleetRow(config: Config, timeline: Timeline, currentIds: CurrentIds, mac: string, options: FleetOptions): FleetRow {
  const machine = config.machines.get(mac);
  const boot = timeline.current(mac);
  const image = machine?.image ?? null;
  const current = image ? (currentIds.get(image) ?? null) : null;
  const last = boot?.phases.at(-1);
  const state = boot?.state ?? 'never';
  const failure = boot ? failureOf(boot) : null;
  let attention: string | null = null;
  if (state === 'failed') attention = `failed at ${failure?.step ?? 'an unknown step'}`;
  else if (state === 'booting' && last && options.now - Date.parse(last.at) > options.stuckAfterMs) attention = `stuck in ${last.phase}`;
  else if (state === 'up' && machine && boot?.imageId && current && boot.imageId !== current) attention = 'runs an older image id';
  return {
    mac,
    hostname: machine?.hostname ?? null,
    known: machine !== undefined,
    image,
    imageId: boot?.imageId ?? current,
    state,
    phase: state === 'booting' ? (last?.phase ?? null) : null,
    durationMs: boot && state !== 'booting' ? bootSpanMs(boot) : null,
    lastSeen: last?.at ?? boot?.startedAt ?? null,
    attention,
    failure,
  };
}

/** Every configured MAC, then every MAC the timeline remembers (unknown ones are bounded there). */
export function fleetMacs(config: Config, timeline: Timeline): string[] {
  return [...new Set([...config.machines.keys(), ...timeline.macs()])];
}

export function bootSpanMs(boot: Boot): number {
  const start = Date.parse(boot.startedAt);
  const end = boot.phases.length ? Date.parse(boot.phases.at(-1)!.at) : start;
  return Math.max(0, end - start);
}

/** The step a failed boot stopped at: the phase before `failed`, and the detail /init sent. */
export function failureOf(boot: Boot): { step: string; detail: string } | null {
  const index = boot.phases.findIndex((p) => p.phase === 'failed');
  if (index < 0) return null;
  const failed = boot.phases[index]!;
  const before = boot.phases.slice(0, index).reverse().find((p) => p.source === 'init') ?? boot.phases[index - 1];
  const named = /^([a-z_]+):/.exec(failed.detail ?? '')?.[1];
  return { step: named ?? before?.phase ?? 'boot', detail: failed.detail ?? 'no detail' };
}

export interface WaterfallBar {
  record: PhaseRecord;
  /** Percent of the axis. */
  left: number;
  width: number;
  /** Milliseconds from the boot's start. */
  startMs: number;
  endMs: number;
}

/**
 * Each record as a bar on the boot's time axis: it ends when the server saw it and starts its
 * duration earlier (a download's time, or /init's step since its previous event); records without
 * a duration are instants (drawn as thin marks).
 */
export function waterfall(boot: Boot): { bars: WaterfallBar[]; totalMs: number } {
  const start = Date.parse(boot.startedAt);
  const spans = boot.phases.map((record) => {
    const endMs = Math.max(0, Date.parse(record.at) - start);
    const startMs = Math.max(0, endMs - (record.durationMs ?? 0));
    return { record, startMs, endMs };
  });
  const totalMs = Math.max(1000, ...spans.map((s) => s.endMs));
  return {
    totalMs,
    bars: spans.map((s) => ({ ...s, left: (s.startMs / totalMs) * 100, width: Math.max(0.4, ((s.endMs - s.startMs) / totalMs) * 100) })),
  };
}

/** A MAC that PXE-booted but is not in the config. */
export interface InboxEntry {
  mac: string;
  firstSeen: string;
  lastSeen: string;
  address: string | null;
  /** What its DHCP and script requests said (boot file, the unknown-MAC policy applied). */
  seen: string[];
  arch: string | null;
  vendorClass: string | null;
  dhcpAgeMs: number | null;
}

export interface SightingInfo {
  arch?: number | null;
  vendorClass?: string | null;
  address?: string | null;
}

const ARCH_NAMES: Record<number, string> = { 0: 'x86 BIOS', 6: 'x86 UEFI (32-bit)', 7: 'x86-64 UEFI', 9: 'x86-64 UEFI', 10: 'ARM32 UEFI', 11: 'ARM64 UEFI', 16: 'x86-64 UEFI HTTP' };

export function inbox(config: Config, timeline: Timeline, sighting: (mac: string) => { ageMs?: number; info?: SightingInfo }): InboxEntry[] {
  const entries: InboxEntry[] = [];
  for (const mac of timeline.macs()) {
    if (config.machines.has(mac)) continue;
    const boots = timeline.boots(mac);
    if (boots.length === 0) continue;
    const records = boots.flatMap((b) => b.phases);
    const address = records
      .filter((r) => r.source === 'dhcp')
      .map((r) => /\b(\d{1,3}(?:\.\d{1,3}){3})\b/.exec(r.detail ?? '')?.[1])
      .filter(Boolean)
      .at(-1);
    const seen = [...new Set(records.map((r) => `${r.phase}${r.detail ? `: ${r.detail}` : ''}`))].slice(-6);
    const { ageMs, info } = sighting(mac);
    entries.push({
      mac,
      firstSeen: boots[0]!.startedAt,
      lastSeen: records.at(-1)?.at ?? boots.at(-1)!.startedAt,
      address: info?.address ?? address ?? null,
      seen,
      arch: info?.arch !== undefined && info.arch !== null ? (ARCH_NAMES[info.arch] ?? `arch ${info.arch}`) : null,
      vendorClass: info?.vendorClass ?? null,
      dhcpAgeMs: ageMs ?? null,
    });
  }
  return entries.sort((a, b) => b.lastSeen.localeCompare(a.lastSeen));
}

const SECRET_NAME = /pass|secret|token|key|credential/i;

/** A machine's config as the page shows it: no password hashes, no values of secret-looking vars. */
export function effectiveConfig(config: Config, mac: string) {
  const machine = config.machines.get(mac);
  if (!machine) return null;
  const image = config.images.get(machine.image);
  return {
    hostname: machine.hostname,
    image: machine.image,
    root: image?.root ?? null,
    cmdline: [image?.cmdline, machine.cmdline].filter(Boolean).join(' '),
    ip: machine.ip ?? null,
    vars: Object.entries(machine.vars).map(([k, v]) => [k, SECRET_NAME.test(k) ? '(hidden)' : String(v)] as const),
    users: machine.users.map((u) => `${u.name}${u.passwordHash ? ' (password set)' : ''}${u.sshAuthorizedKeys.length ? ` (${u.sshAuthorizedKeys.length} ssh keys)` : ''}`),
    sshKeys: machine.sshAuthorizedKeys.length,
    files: Object.entries(machine.files).map(([path, attrs]) => `${path}${attrs.mode !== undefined ? ` mode ${attrs.mode.toString(8)}` : ''}${attrs.owner ? ` owner ${attrs.owner}` : ''}`),
    folder: machine.folder,
  };
}
