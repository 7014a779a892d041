import type { DefaultsConfig, FileAttrs, ImageConfig, MachineDiskConfig, ServerConfig, UserConfig } from './schema.ts';

export type { DefaultsConfig, FileAttrs, ImageConfig, MachineDiskConfig, ServerConfig, UserConfig };

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
  /** The machine's own `disk:` (overrides its image's; server/boot/disk-policy.ts). */
  disk?: MachineDiskConfig;
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
