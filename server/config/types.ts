import type { DefaultsConfig, FileAttrs, ImageConfig, ServerConfig, UserConfig } from './schema.ts';
import { macToHyphens } from './mac.ts';

export type { DefaultsConfig, FileAttrs, ImageConfig, ServerConfig, UserConfig };

/** An image as configured, with its name. Its built artifacts live in the image cache. */
export interface Image extends ImageConfig {
  name: string;
}

/** A machine as configured, with defaults applied. `mac` is canonical: aa:bb:cc:dd:ee:ff. */
export interface Machine {
  mac: string;
  hostname: string;
  /** Name of the image it boots (always a key of Config.images). */
  image: string;
  /** Static DHCP reservation (full mode). */
  ip?: string;
  /** Extra kernel arguments: defaults.cmdline then the machine's own. */
  cmdline: string;
  vars: Record<string, string | number | boolean>;
  users: UserConfig[];
  sshAuthorizedKeys: string[];
  files: Record<string, FileAttrs>;
  /** Absolute path of config/machines/<hostname-or-mac>/ when it exists, else null. */
  folder: string | null;
  /** false for a MAC that is not in the config (served by the unknown-MAC policy). */
  known: boolean;
}

/** A validated, normalised config. Immutable: a reload produces a new object. */
export interface Config {
  /** Absolute path of the YAML file it came from. */
  file: string;
  /** Directory of that file; machine folders are looked up under <baseDir>/machines/. */
  baseDir: string;
  server: ServerConfig;
  images: ReadonlyMap<string, Image>;
  machines: ReadonlyMap<string, Machine>;
  defaults: DefaultsConfig;
}

/**
 * What a MAC gets: its machine entry, or for an unknown MAC the configured policy.
 * This is the one place that decides; DHCP, TFTP and HTTP all ask it.
 */
export type BootTarget =
  | { kind: 'machine'; machine: Machine }
  | { kind: 'menu'; machine: Machine | null; timeout: number }
  | { kind: 'local' }
  | { kind: 'deny' };

/** Hostname given to an unknown MAC booted by the boot-default or menu policy. */
export function hostnameForUnknown(mac: string): string {
  return `netboot-${macToHyphens(mac).replace(/-/g, '')}`;
}

export function lookupMachine(config: Config, mac: string): BootTarget {
  const machine = config.machines.get(mac);
  if (machine) return { kind: 'machine', machine };
  const defaultImage = config.defaults.image ?? config.images.keys().next().value;
  const anonymous: Machine | null =
    defaultImage === undefined
      ? null
      : {
          mac,
          hostname: hostnameForUnknown(mac),
          image: defaultImage,
          cmdline: config.defaults.cmdline,
          vars: { ...config.defaults.vars },
          users: config.defaults.users,
          sshAuthorizedKeys: config.defaults.sshAuthorizedKeys,
          files: config.defaults.files,
          folder: null,
          known: false,
        };
  switch (config.defaults.unknown) {
    case 'boot-default':
      return anonymous ? { kind: 'machine', machine: anonymous } : { kind: 'deny' };
    case 'menu':
      return { kind: 'menu', machine: anonymous, timeout: config.defaults.menuTimeout };
    case 'local':
      return { kind: 'local' };
    case 'deny':
      return { kind: 'deny' };
  }
}
