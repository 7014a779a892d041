import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { diskKernelArgs, diskPolicy } from '../boot/disk-policy.ts';
import type { Image, Machine } from '../config/types.ts';
import { macToHyphens } from '../config/mac.ts';
import { renderTemplate } from '../layers/template.ts';
import { ipxeArchCheck } from '../boot/ipxe-arch.ts';

/**
 * iPXE scripts, rendered from the templates in boot-assets/ipxe/ (plain `{{name}}`
 * substitution). Pure functions: the route decides which script, these only render it.
 */

export const TEMPLATE_NAMES = ['generic', 'machine', 'menu', 'local', 'deny', 'not-built'] as const;
export type TemplateName = (typeof TEMPLATE_NAMES)[number];
export type IpxeTemplates = Record<TemplateName, string>;

export const DEFAULT_TEMPLATE_DIR = fileURLToPath(new URL('../../boot-assets/ipxe/', import.meta.url));

export function loadIpxeTemplates(dir = DEFAULT_TEMPLATE_DIR): IpxeTemplates {
  return Object.fromEntries(TEMPLATE_NAMES.map((name) => [name, readFileSync(`${dir}/${name}.ipxe`, 'utf8')])) as IpxeTemplates;
}

/** Seconds between download retries in the scripts, and between "not built yet" polls. */
export const DOWNLOAD_RETRY_SECONDS = 5;
export const NOT_BUILT_RETRY_SECONDS = 10;
export const DENY_PAUSE_SECONDS = 30;

export function renderGeneric(t: IpxeTemplates, server: string): string {
  return renderTemplate(t.generic, { server, retryDelay: NOT_BUILT_RETRY_SECONDS }, 'generic.ipxe');
}

export interface BootScriptParams {
  server: string;
  machine: Machine;
  image: Image;
  imageId: string;
  /** Signed layer URL for this boot (netboot initramfs only). */
  layerUrl: string;
  /** This boot's event token (signing.ts eventToken): /init sends it with each event. */
  eventToken: string;
  rebootDelay: number;
  /** host:port of the NBD server, for images whose root is streamed over NBD. */
  nbd: string;
  /** server.artifactBaseUrl: kernel, initrd and rootfs come from this HTTP cache instead of `server`. */
  artifactBase?: string;
}

/**
 * Image artifact URLs. From this server they carry ?mac= so each download lands on the
 * machine's timeline; through a cache they do not, so every machine shares one cache entry.
 */
function artifactUrl(p: BootScriptParams, name: string): string {
  if (p.artifactBase) return `${p.artifactBase}/images/${p.imageId}/${name}`;
  return `${p.server}/images/${p.imageId}/${name}?mac=${macToHyphens(p.machine.mac)}`;
}

/** The kernel command line after the kernel URL, per the contract in DESIGN.md. */
export function kernelArgs(p: BootScriptParams): string {
  const args = ['initrd=initrd.img'];
  if (p.image.initramfs === 'netboot') {
    args.push(
      `netboot.server=${p.server}`,
      `netboot.mac=${p.machine.mac}`,
      `netboot.image=${p.imageId}`,
      `netboot.root=${p.image.root}`,
      `netboot.layer=${p.layerUrl}`,
      `netboot.token=${p.eventToken}`,
      `netboot.init=${p.image.init}`,
    );
    if (p.image.root === 'nbd') args.push(`netboot.nbd=${p.nbd}`);
    if (p.artifactBase) args.push(`netboot.artifacts=${p.artifactBase}`);
    args.push(`netboot.reboot=${p.rebootDelay}`, ...diskKernelArgs(diskPolicy(p.image, p.machine)));
  }
  args.push(p.image.cmdline, p.machine.cmdline);
  return args.map((a) => a.trim()).filter(Boolean).join(' ');
}

export function renderBoot(t: IpxeTemplates, p: BootScriptParams): string {
  const initrd = p.image.initramfs === 'image' ? 'image-initrd.img' : 'initrd.img';
  return renderTemplate(
    t.machine,
    {
      server: p.server,
      mac: p.machine.mac,
      hostname: p.machine.hostname,
      image: p.image.name,
      imageId: p.imageId,
      kernelUrl: artifactUrl(p, 'vmlinuz'),
      initrdUrl: artifactUrl(p, initrd),
      kernelArgs: kernelArgs(p),
      archCheck: ipxeArchCheck(p.image.platform),
      platform: p.image.platform,
      retryDelay: DOWNLOAD_RETRY_SECONDS,
      rebootDelay: Math.max(p.rebootDelay, 5),
    },
    'machine.ipxe',
  );
}

export interface MenuParams {
  server: string;
  mac: string;
  /** Configured images, in config order; `built` false ones are listed but marked. */
  images: { name: string; built: boolean }[];
  defaultImage: string | null;
  timeoutSeconds: number;
}

export function renderMenu(t: IpxeTemplates, p: MenuParams): string {
  const hyphens = macToHyphens(p.mac);
  const label = (name: string) => `img_${name.replace(/[^A-Za-z0-9_]/g, '_')}`;
  const items = p.images.map((img) => `item ${label(img.name)} ${img.name}${img.built ? '' : ' (not built yet)'}`).join('\n');
  const targets = p.images
    .map((img) => `:${label(img.name)}\nchain --replace ${p.server}/machines/${hyphens}/boot.ipxe?image=${encodeURIComponent(img.name)} || goto menu`)
    .join('\n');
  return renderTemplate(
    t.menu,
    {
      server: p.server,
      mac: p.mac,
      items: items || 'item --gap (no images configured)',
      targets,
      default: p.defaultImage && p.images.some((i) => i.name === p.defaultImage) ? label(p.defaultImage) : 'local',
      timeoutMs: p.timeoutSeconds * 1000,
    },
    'menu.ipxe',
  );
}

export function renderLocal(t: IpxeTemplates, server: string, mac: string): string {
  return renderTemplate(t.local, { server, mac }, 'local.ipxe');
}

export function renderDeny(t: IpxeTemplates, server: string, mac: string): string {
  return renderTemplate(t.deny, { server, mac, pause: DENY_PAUSE_SECONDS }, 'deny.ipxe');
}

export function renderNotBuilt(t: IpxeTemplates, p: { server: string; machine: Machine; scriptUrl: string }): string {
  return renderTemplate(
    t['not-built'],
    { server: p.server, mac: p.machine.mac, hostname: p.machine.hostname, image: p.machine.image, scriptUrl: p.scriptUrl, retryDelay: NOT_BUILT_RETRY_SECONDS },
    'not-built.ipxe',
  );
}
