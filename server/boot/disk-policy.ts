import type { Image, Machine } from '../config/types.ts';

/** What a machine does with its local disk (config `disk:`), read by /init from the kernel command line (disk.sh). */
export interface DiskPolicy {
  /** MiB of image roots kept on the disk; null: no cache, the root comes over the network. */
  cacheMiB: number | null;
  keep: string[];
  label: string;
  device?: string;
  /** Partition and format the disk when it is empty. */
  init: boolean;
}

export const DEFAULT_DISK_LABEL = 'netboot';
export const DEFAULT_CACHE_MIB = 8192;

/** The image's `disk:` with the machine's own fields over it; null when neither has one (a diskless boot). */
export function diskPolicy(image: Pick<Image, 'disk'>, machine: Pick<Machine, 'disk'>): DiskPolicy | null {
  if (!image.disk && !machine.disk) return null;
  const merged = { ...image.disk, ...machine.disk };
  const policy: DiskPolicy = {
    cacheMiB: merged.cache === false ? null : (merged.cacheMiB ?? DEFAULT_CACHE_MIB),
    keep: [...new Set(merged.keep ?? [])],
    label: merged.label ?? DEFAULT_DISK_LABEL,
    init: machine.disk?.init === true,
  };
  if (merged.device) policy.device = merged.device;
  return policy;
}

/** The `netboot.disk*` kernel arguments for a policy (none for a diskless machine). */
export function diskKernelArgs(policy: DiskPolicy | null): string[] {
  if (!policy) return [];
  const args = [`netboot.disk=${policy.label}`];
  if (policy.cacheMiB !== null) args.push(`netboot.disk.cache=${policy.cacheMiB}`);
  if (policy.keep.length) args.push(`netboot.disk.keep=${policy.keep.join(',')}`);
  if (policy.device) args.push(`netboot.disk.device=${policy.device}`);
  if (policy.init) args.push('netboot.disk.init');
  return args;
}
