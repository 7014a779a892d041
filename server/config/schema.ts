import { z } from 'zod';

/**
 * The shape of netboot.yaml. Cross-field rules (unknown images, duplicate MACs/hostnames,
 * machine folders) are checked in validate.ts, where errors can point at the offending line.
 */

const ipv4 = z.string().regex(/^(\d{1,3})(\.\d{1,3}){3}$/, 'expected an IPv4 address like 10.0.0.1');
const port = z.number().int().min(1).max(65535);
const fileMode = z
  .union([z.string().regex(/^0?[0-7]{3,4}$/, 'expected an octal mode like "0640"'), z.number().int()])
  .transform((mode) => (typeof mode === 'number' ? mode : parseInt(mode, 8)));

export const userSchema = z.strictObject({
  name: z.string().regex(/^[a-z_][a-z0-9_-]*$/, 'expected a Unix user name'),
  uid: z.number().int().min(0).optional(),
  gid: z.number().int().min(0).optional(),
  groups: z.array(z.string()).default([]),
  shell: z.string().default('/bin/bash'),
  home: z.string().optional(),
  /** crypt(3) hash for /etc/shadow; absent = password login disabled. */
  passwordHash: z.string().optional(),
  sshAuthorizedKeys: z.array(z.string()).default([]),
});

/** Owner/mode overrides for files of a machine's tree, keyed by path relative to the tree root. */
export const fileAttrsSchema = z.strictObject({
  mode: fileMode.optional(),
  owner: z.string().regex(/^[^:\s]+(:[^:\s]+)?$/, 'expected "user" or "user:group"').optional(),
});

/**
 * Kernel arguments, written into an iPXE `kernel` line: one line, no `||`/`&&` (iPXE would
 * read them as its own operators). `${setting}` is left to iPXE, which expands it (e.g.
 * `${net0/ip}`); iPXE has no way to pass a literal `${...}` through.
 */
export const kernelCmdline = z
  .string()
  .refine((s) => !/[\u0000-\u001f\u007f]/.test(s), 'must be one line without control characters (tabs, newlines): put all arguments on one line separated by spaces')
  .refine((s) => !/(^|\s)(\|\||&&)(\s|$)/.test(s), "must not contain '||' or '&&' on its own: iPXE reads them as its operators in the kernel line")
  .default('');

/** A directory kept on a machine's disk across boots: absolute, no `.`/`..`, not the root or the kernel's API filesystems. */
const keptDirectory = z
  .string()
  .regex(/^(\/[A-Za-z0-9._@+-]+)+$/, 'expected an absolute path like /home (letters, digits, . _ @ + -; no spaces or commas)')
  .refine((path) => !path.split('/').some((part) => part === '.' || part === '..'), 'must not contain . or .. components')
  .refine((path) => !/^\/(proc|sys|dev|run|tmp)(\/|$)/.test(path), 'cannot keep /proc, /sys, /dev, /run or /tmp: they are not the image\'s files');

/**
 * A machine's local disk (boot-assets/initramfs/lib/netboot/disk.sh). Set on an image, a
 * machine's own `disk:` overrides it field by field (server/boot/disk-policy.ts).
 */
const diskFields = {
  /** Keep each image id's root on the disk (verified by its sha256) and boot from it. */
  cache: z.boolean().optional(),
  /** Most MiB of image roots kept; the least recently booted ids go first. */
  cacheMiB: z.number().int().min(64).optional(),
  /** Directories that live on the disk and survive reboots; the rest of the system is fresh each boot. */
  keep: z.array(keptDirectory).optional(),
  /** The filesystem label netboot uses (it touches no other filesystem). */
  label: z.string().regex(/^[A-Za-z0-9_-]{1,16}$/, 'expected up to 16 letters, digits, _ or -').optional(),
  /** The disk to prepare or use (e.g. /dev/nvme0n1); default: the labelled filesystem wherever it is, else the first disk. */
  device: z.string().regex(/^\/dev\/[a-z][a-z0-9]*$/, 'expected a whole disk like /dev/sda or /dev/nvme0n1').optional(),
};
export const imageDiskSchema = z.strictObject({
  ...diskFields,
  init: z.undefined({ error: 'disk.init is set per machine (machines.<mac>.disk.init: true), so netboot formats only the disks an admin named' }).optional(),
});
/** `init` only per machine: netboot partitions and formats an empty disk only where the admin said so for that machine. */
export const machineDiskSchema = z.strictObject({ ...diskFields, init: z.boolean().optional() });

const machineCommon = {
  cmdline: kernelCmdline,
  vars: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).default({}),
  users: z.array(userSchema).default([]),
  sshAuthorizedKeys: z.array(z.string()).default([]),
  files: z.record(z.string(), fileAttrsSchema).default({}),
};

export const machineSchema = z.strictObject({
  hostname: z
    .string()
    .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i, 'expected a hostname (letters, digits, hyphens; max 63)')
    .optional(),
  image: z.string().optional(),
  /** Static address reservation, used when server.dhcp.mode is full. */
  ip: ipv4.optional(),
  /** Overrides the image's `disk:` field by field; `init: true` lets netboot prepare an empty disk. */
  disk: machineDiskSchema.optional(),
  ...machineCommon,
});

export const imageSchema = z.strictObject({
  source: z
    .string()
    .regex(/^(docker|oci-archive):.+/, 'expected "docker:REF" or "oci-archive:PATH"'),
  cmdline: kernelCmdline,
  root: z.enum(['ram', 'nbd']).default('ram'),
  /** netboot = our initramfs (default); image = the image's own initramfs, served as is. */
  initramfs: z.enum(['netboot', 'image']).default('netboot'),
  /** Kernel version to boot when the image has several; default the newest. */
  kernel: z.string().optional(),
  init: z.string().default('/sbin/init'),
  compression: z.enum(['zstd', 'xz', 'gzip', 'lz4', 'lzo']).default('zstd'),
  platform: z.string().default('linux/amd64'),
  /** NIC driver modules to put into the initramfs; default: a list covering VMs and common lab hardware. */
  nics: z.array(z.string()).optional(),
  /** For its machines that have a disk: cache the root there, keep directories (a machine's `disk:` overrides). */
  disk: imageDiskSchema.optional(),
});

export const dhcpSchema = z
  .strictObject({
    mode: z.enum(['proxy', 'full', 'off']).default('proxy'),
    /** UEFI x86-64 binary handed to arch 7/9 clients. */
    efiBinary: z.enum(['snponly.efi', 'ipxe.efi']).default('snponly.efi'),
    pool: z
      .strictObject({
        start: ipv4,
        end: ipv4,
        netmask: ipv4.default('255.255.255.0'),
        router: ipv4.optional(),
        dns: z.array(ipv4).default([]),
        domain: z.string().optional(),
        leaseSeconds: z.number().int().min(60).default(3600),
        /** Addresses MACs not in `machines` may hold at once (offered, bound or declined); default half the pool, at most 256. */
        maxUnknownLeases: z.number().int().min(0).optional(),
        /** Lease time for MACs not in `machines` (never longer than leaseSeconds). */
        unknownLeaseSeconds: z.number().int().min(60).default(300),
      })
      .optional(),
  })
  .refine((dhcp) => dhcp.mode !== 'full' || dhcp.pool !== undefined, {
    message: 'dhcp.mode full needs a pool: add server.dhcp.pool with start and end addresses',
    path: ['pool'],
  });

export const serverSchema = z.strictObject({
  /** The address machines reach this server at (used in every URL handed out). */
  address: ipv4.default('127.0.0.1'),
  /** Where to listen (0.0.0.0 = every interface of this host or namespace). */
  bind: ipv4.default('0.0.0.0'),
  httpPort: port.default(8080),
  tftp: z
    .strictObject({
      enabled: z.boolean().default(true),
      port: port.default(69),
      maxBlksize: z.number().int().min(512).max(65464).default(1468),
      maxTransfers: z.number().int().min(1).default(64),
      /** Transfers at once from one IP address (any source port): one host cannot take every slot. */
      maxTransfersPerAddress: z.number().int().min(1).default(4),
    })
    .prefault({}),
  dhcp: dhcpSchema.prefault({}),
  nbd: z
    .strictObject({
      port: port.default(10809),
      maxConnections: z.number().int().min(1).default(256),
      /** Connections at once from one IP address. */
      maxConnectionsPerAddress: z.number().int().min(1).default(8),
      /** Reads served at once across all clients; more wait in a queue that takes clients in turn. */
      maxConcurrentReads: z.number().int().min(1).max(1024).default(16),
      /** A client with replies waiting that takes none of their bytes for this long is disconnected (idle clients never are). */
      stallTimeoutSeconds: z.number().int().min(1).default(120),
    })
    .prefault({}),
  /**
   * Admission control for root streams (whole-squashfs HTTP downloads, netboot.root=ram): at
   * most maxRootStreams at once, and for kernel and initrd downloads: at most maxBootFileStreams;
   * the others are held, then get 503 + Retry-After, and keep a first-come, first-served place
   * (server/admission/queue.ts; one queue per budget, the settings below apply to both). NBD reads
   * have their own budget (nbd.maxConcurrentReads).
   */
  admission: z
    .strictObject({
      /**
       * Root streams served at once: about what the link keeps full (more only split it). 16 fills
       * a 10-25 GbE server link with 1 GbE clients; bench/storm at 500 machines: 16 beat 8 and 32
       * behind a shaped 10 Gbit/s link and tied on an unshaped one. 0 = no limit.
       */
      maxRootStreams: z.number().int().min(0).max(4096).default(16),
      /**
       * Kernel and initrd downloads (bodies of 1 MiB or more) served at once, a budget of their own:
       * with root: nbd they are most of a boot's bytes. Behind a shaped 1 Gbit/s link, 500 machines
       * fetching theirs all at once took 88-94 s to be up (TCP splitting the link 500 ways), 81 s in
       * turns of 16 (bench/storm). 0 = no limit.
       */
      maxBootFileStreams: z.number().int().min(0).max(4096).default(16),
      /** Machines that may hold a place in the queue; beyond, a request is told to retry later without one. */
      maxQueued: z.number().int().min(1).max(65536).default(1024),
      /** Places one IP address may hold (one per MAC it names). */
      maxQueuedPerAddress: z.number().int().min(1).max(1024).default(4),
      /** How long a waiting request is held open for a slot, and the longest Retry-After handed out, seconds. */
      maxRetryAfterSeconds: z.number().int().min(1).max(600).default(30),
      /**
       * A root stream still running after this long (or 4 times the mean stream time, if longer)
       * while machines wait is cut: the client resumes with Range from the back of the queue, so a
       * client that stops reading cannot keep a slot for ever.
       */
      preemptAfterSeconds: z.number().int().min(1).default(120),
    })
    .prefault({}),
  /**
   * How a request proves it comes from the machine whose MAC it names, before it gets that
   * machine's secrets (signed layer, event token). See server/boot/identity.ts.
   */
  identity: z
    .strictObject({
      check: z.enum(['evidence', 'off']).default('evidence'),
      /** Proxy mode: a machine's DHCP packet must be at most this old when it asks for its script or layer. */
      bootWindowSeconds: z.number().int().min(30).default(900),
    })
    .prefault({}),
  /**
   * Where machines fetch image artifacts (kernel, initrd, rootfs, manifest) from: an HTTP cache
   * or mirror in front of this server (e.g. http://cache.lab:8081). Scripts, layers and events
   * stay on this server. Artifacts never change under an id, so any cache may keep them forever.
   */
  artifactBaseUrl: z
    .string()
    .regex(/^https?:\/\/[^\s/?#]+(\/[^\s?#]*)?$/, 'expected an http:// or https:// URL without query, e.g. http://cache.lab:8081')
    .transform((url) => url.replace(/\/+$/, ''))
    .optional(),
  stateDir: z.string().default('/var/lib/netboot'),
  cacheDir: z.string().default('/var/cache/netboot'),
  /** Older name of api.adminToken, still accepted as an admin token. */
  apiToken: z.string().min(16, 'apiToken must be at least 16 characters').optional(),
  /** Who may use /api/* (bearer tokens). /metrics and /healthz are always open. */
  api: z
    .strictObject({
      /** Reads (GET /api/*). */
      readToken: z.string().min(16, 'readToken must be at least 16 characters').optional(),
      /** Reads and mutations (e.g. POST /api/images/<name>/rebuild); absent = mutations disabled. */
      adminToken: z.string().min(16, 'adminToken must be at least 16 characters').optional(),
      /** Reads without a token, for labs that want an open dashboard. */
      public: z.boolean().default(false),
    })
    .prefault({}),
  /** Seconds a machine in a failed boot waits before it reboots and retries. */
  rebootDelay: z.number().int().min(0).default(30),
  /** How often a running server checks whether an image's source moved (docker tag, archive file). */
  imageCheckSeconds: z.number().int().min(1).default(60),
  /**
   * Nice steps the control plane (main thread: DHCP, scripts, events; the TFTP thread) runs above
   * bulk work (NBD, sendfile, image-build tools) when the process may raise it (server/threads/priority.ts). 0: off.
   */
  controlPlanePriority: z.number().int().min(0).max(19).default(5),
  /**
   * Directory of the iPXE binaries handed to firmware (undionly.kpxe, snponly.efi, ipxe.efi,
   * ipxe-arm64.efi). Default: the iPXE scripts/setup-host.sh fetched (Debian 13's package), else
   * the host's /usr/lib/ipxe. See server/ipxe-binaries.ts.
   */
  ipxeDir: z.string().optional(),
  /**
   * auto: answer IPv6 Router Solicitations from machines netboot is booting with an RA that
   * advertises nothing (router lifetime 0, no prefix, M/O clear), so iPXE does not wait for
   * IPv6 autoconfiguration on a segment without an IPv6 router. off: send nothing. See server/ipv6/.
   */
  ipv6RouterAdvert: z.enum(['auto', 'off']).default('auto'),
});

export const defaultsSchema = z
  .strictObject({
    image: z.string().optional(),
    unknown: z.enum(['menu', 'boot-default', 'local', 'deny']).default('menu'),
    menuTimeout: z.number().int().min(0).default(10),
    ...machineCommon,
  })
  .prefault({});

export const configSchema = z.strictObject({
  server: serverSchema.prefault({}),
  images: z.record(z.string().regex(/^[a-z0-9][a-z0-9._-]*$/, 'image names: lower-case letters, digits, . _ -'), imageSchema).default({}),
  /** Keys are MACs in any common spelling; validate.ts normalises them. */
  machines: z.record(z.string(), machineSchema.nullable().transform((m) => m ?? machineSchema.parse({}))).default({}),
  defaults: defaultsSchema,
});

export type RawConfig = z.infer<typeof configSchema>;
export type ImageConfig = z.infer<typeof imageSchema>;
export type MachineConfig = z.infer<typeof machineSchema>;
export type UserConfig = z.infer<typeof userSchema>;
export type FileAttrs = z.infer<typeof fileAttrsSchema>;
export type ServerConfig = z.infer<typeof serverSchema>;
export type DhcpConfig = z.infer<typeof dhcpSchema>;
export type DefaultsConfig = z.infer<typeof defaultsSchema>;
export type MachineDiskConfig = z.infer<typeof machineDiskSchema>;
