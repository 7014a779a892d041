import { defaultHostname } from '../config/mac.ts';
import type { Config, Image, Machine } from '../config/types.ts';

/**
 * What a MAC gets: the one answer DHCP, TFTP and HTTP all ask for (pixiecore's BootSpec).
 * A configured machine boots its image. An unknown MAC follows `defaults.unknown`:
 * `boot-default` boots the default image as an anonymous machine, `menu` shows a menu (and
 * boots the image chosen there), `local` exits to the local disk, `deny` gets nothing.
 */
export type BootPlan =
  | { kind: 'boot'; machine: Machine; image: Image }
  /** The menu; `machine` is what the menu's default entry boots (null: the config has no images). */
  | { kind: 'menu'; machine: Machine | null; timeout: number }
  | { kind: 'local' }
  | { kind: 'deny' };

/** `chosenImage`: the image an unknown MAC picked from the menu (ignored for anything else). */
export function planBoot(config: Config, mac: string, chosenImage?: string): BootPlan {
  const known = config.machines.get(mac);
  if (known) return { kind: 'boot', machine: known, image: config.images.get(known.image)! };
  const policy = config.defaults.unknown;
  if (policy === 'local' || policy === 'deny') return { kind: policy };
  const anonymous = (imageName: string | undefined): Machine | null =>
    imageName === undefined || !config.images.has(imageName)
      ? null
      : {
          mac,
          hostname: defaultHostname(mac),
          image: imageName,
          cmdline: config.defaults.cmdline,
          vars: { ...config.defaults.vars },
          users: config.defaults.users,
          sshAuthorizedKeys: config.defaults.sshAuthorizedKeys,
          files: config.defaults.files,
          folder: null,
          known: false,
        };
  const fallback = anonymous(config.defaults.image ?? config.images.keys().next().value);
  if (policy === 'boot-default') return fallback ? { kind: 'boot', machine: fallback, image: config.images.get(fallback.image)! } : { kind: 'deny' };
  const chosen = chosenImage === undefined ? null : anonymous(chosenImage);
  if (chosen) return { kind: 'boot', machine: chosen, image: config.images.get(chosen.image)! };
  return { kind: 'menu', machine: fallback, timeout: config.defaults.menuTimeout };
}

/** The machine entry a MAC boots as, if the policy boots it at all (a menu's default entry counts). */
export function bootingMachine(plan: BootPlan): Machine | null {
  return plan.kind === 'boot' || plan.kind === 'menu' ? plan.machine : null;
}
