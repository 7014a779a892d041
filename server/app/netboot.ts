import { statSync } from 'node:fs';
import type Dockerode from 'dockerode';
import type { FastifyInstance } from 'fastify';
import type { ConfigStore } from '../config/watch.ts';
import { DhcpSightings } from '../boot/dhcp-sightings.ts';
import { DhcpServer, type DhcpExchange } from '../dhcp/server.ts';
import { Metrics } from '../events/metrics.ts';
import { Timeline } from '../events/timeline.ts';
import { createHttpServer } from '../http/server.ts';
import { selectIpxeDir } from '../ipxe-binaries.ts';
import { startRouterAdvertResponder, type RouterAdvertResponder } from '../ipv6/start.ts';
import type { ImageCache } from '../images/cache.ts';
import type { Logger } from '../log.ts';
import type { NbdConnectionEvent, NbdExport } from '../nbd/server.ts';
import { NbdThread } from '../nbd/thread.ts';
import { dirSource, generatedSource, ipxeSource, mountSources, TftpThread, type TransferEvent } from '../tftp/index.ts';
import { cacheArtifactStore } from './cache-artifact-store.ts';
import { ImageBuilds } from './image-builds.ts';
import { openImageCache } from './images.ts';

export interface NetbootOptions {
  store: ConfigStore;
  log: Logger;
  docker?: Dockerode;
  /** Directory of the iPXE binaries; default server.ipxeDir, else as server/ipxe-binaries.ts selects. */
  ipxeDir?: string;
}

/** The running server: every service, and how to stop them all. */
export interface Netboot {
  http: FastifyInstance;
  tftp: TftpThread | null;
  dhcp: DhcpServer | null;
  nbd: NbdThread | null;
  timeline: Timeline;
  metrics: Metrics;
  builds: ImageBuilds;
  stop(): Promise<void>;
}

/** Artifacts a TFTP-only client may fetch, beside the iPXE binaries. */
const TFTP_IMAGE_ARTIFACTS = new Set(['vmlinuz', 'initrd.img', 'image-initrd.img']);

/**
 * Composes the services around one config store: image builds, HTTP (scripts, artifacts,
 * layers, API, metrics), TFTP and DHCP. The orchestration of "which file for which MAC"
 * lives in one boot plan (server/boot/plan.ts) that DHCP and HTTP ask; DHCP and TFTP also feed the
 * timeline. Services that fail to start stop the ones already started.
 */
export async function startNetboot(options: NetbootOptions): Promise<Netboot> {
  const { store, log } = options;
  const config = store.current;
  const metrics = new Metrics();
  const timeline = new Timeline({ metrics, isConfigured: (mac) => store.current.machines.has(mac) });
  const cache = openImageCache(config, log);
  const builds = new ImageBuilds(cache, () => store.current, log, metrics, options.docker);
  // Which MAC an address belongs to, learnt from DHCP offers and from HTTP requests whose peer
  // proved to be the MAC they name (/init's layer and rootfs fetches): TFTP and NBD only see addresses.
  const addressOwners = new Map<string, string>();
  // Every DHCP packet's client MAC, for the identity evidence of proxy mode (server/boot/identity.ts).
  const dhcpSightings = new DhcpSightings(undefined, undefined, (mac) => store.current.machines.has(mac));

  const started: { stop(): Promise<unknown> }[] = [];
  const stop = async () => {
    builds.stop();
    for (const service of started.reverse()) await service.stop().catch((err) => log.warn({ err }, 'stopping a service failed'));
  };

  // Declared before HTTP listens: its handlers ask for DHCP leases and NBD clients from the
  // first request on, while the services after it are still starting (null until then).
  let nbd: NbdThread | null = null;
  let dhcp: DhcpServer | null = null;
  const ipxe = selectIpxeDir(options.ipxeDir ?? config.server.ipxeDir);
  log[ipxe.warning ? 'warn' : 'info']({ phase: 'serve', ipxeDir: ipxe.dir, source: ipxe.source, version: ipxe.version }, ipxe.warning ?? 'iPXE binaries');
  try {
    const http = await createHttpServer({
      getConfig: () => store.current,
      artifacts: cacheArtifactStore(cache, builds),
      timeline,
      metrics,
      log: log.child({ service: 'http' }),
      stateDir: config.server.stateDir,
      leaseLookup: (mac) => dhcp?.leases?.active(mac)?.ip,
      dhcpSightings,
      rebuild: (name) => builds.request(name, { pull: true }),
      nbdClients: (id) => nbd?.connectedExports().get(id) ?? 0,
      ipxeDir: ipxe.dir,
    });
    http.addHook('onResponse', async (request) => {
      // Only a peer that proved to be the MAC (a stranger asking for a machine's public layer must not put its TFTP and NBD on that machine's timeline).
      if (request.note?.mac && request.note.evidenced) addressOwners.set(request.ip.replace(/^::ffff:/, ''), request.note.mac);
    });
    await http.listen({ host: config.server.bind, port: config.server.httpPort });
    started.push({ stop: () => http.close() });

    let tftp: TftpThread | null = null;
    if (config.server.tftp.enabled) {
      tftp = new TftpThread({
        host: config.server.bind,
        port: config.server.tftp.port,
        maxTransfers: config.server.tftp.maxTransfers,
        maxTransfersPerAddress: config.server.tftp.maxTransfersPerAddress,
        limits: { maxBlksize: config.server.tftp.maxBlksize },
        log: log.child({ service: 'tftp' }),
        source: tftpTree(cache.imagesDir, http, ipxe.dir),
        onTransfer: (event) => recordTftp(event, addressOwners, timeline, metrics),
      });
      await tftp.start();
      started.push(tftp);
    }

    // Before DHCP, so the first boot's window is open when its iPXE solicits.
    let routerAdverts: RouterAdvertResponder | null = null;
    if (config.server.ipv6RouterAdvert === 'auto' && config.server.dhcp.mode !== 'off') {
      routerAdverts = await startRouterAdvertResponder(config.server.address, log.child({ service: 'ipv6' }));
      if (routerAdverts) started.push(routerAdverts);
    }

    if (config.server.dhcp.mode !== 'off') {
      dhcp = new DhcpServer({
        config: () => store.current,
        logger: log.child({ service: 'dhcp' }),
        bind: config.server.bind,
        onPacket: (type, direction) => metrics.dhcpPacket(type, direction),
        onExchange: (exchange) => {
          dhcpSightings.note(exchange.mac, { arch: exchange.arch, vendorClass: exchange.vendorClass ?? null, address: exchange.offered.ip ?? null });
          if (exchange.replyType && exchange.offered.bootfile) routerAdverts?.bootStarted(exchange.mac);
          recordDhcp(exchange, addressOwners, timeline);
        },
      });
      await dhcp.start();
      started.push(dhcp);
    }

    if ([...config.images.values()].some((image) => image.root === 'nbd')) {
      nbd = new NbdThread({
        host: config.server.bind,
        port: config.server.nbd.port,
        lookupExport: (id) => nbdExport(cache, id),
        maxConnections: config.server.nbd.maxConnections,
        maxConcurrentReads: config.server.nbd.maxConcurrentReads,
        maxConnectionsPerAddress: config.server.nbd.maxConnectionsPerAddress,
        stallTimeoutMs: config.server.nbd.stallTimeoutSeconds * 1000,
        log: log.child({ service: 'nbd' }),
        onConnection: (event) => recordNbd(event, addressOwners, timeline),
        onReads: (batch) => metrics.nbdReads(batch),
      });
      await nbd.start();
      started.push(nbd);
    }

    store.on('change', (next, previous) => {
      builds.syncWatchers();
      for (const name of next.images.keys()) {
        if (JSON.stringify(next.images.get(name)) !== JSON.stringify(previous.images.get(name))) void builds.request(name);
      }
      const restartNeeded = (['address', 'bind', 'httpPort', 'stateDir', 'cacheDir', 'ipxeDir', 'ipv6RouterAdvert', 'controlPlanePriority'] as const).filter((key) => next.server[key] !== previous.server[key]);
      const servicesChanged =
        JSON.stringify(next.server.tftp) !== JSON.stringify(previous.server.tftp) || (next.server.dhcp.mode === 'off') !== (previous.server.dhcp.mode === 'off');
      if (restartNeeded.length || servicesChanged) {
        log.warn({ phase: 'config', keys: restartNeeded, services: servicesChanged }, 'these server settings take effect at the next restart');
      }
    });
    builds.start();

    log.info(
      {
        phase: 'serve',
        http: `http://${config.server.address}:${config.server.httpPort}`,
        tftp: tftp ? config.server.tftp.port : 'off',
        dhcp: config.server.dhcp.mode,
        nbd: nbd ? config.server.nbd.port : 'off',
        // HTTP root, kernel and initrd streams at once (server.admission; read on every request, so a reload applies at once).
        rootStreams: config.server.admission.maxRootStreams || 'no limit',
        bootFileStreams: config.server.admission.maxBootFileStreams || 'no limit',
        images: [...config.images.keys()],
        machines: config.machines.size,
      },
      'netboot serving',
    );
    return { http, tftp, dhcp, nbd, timeline, metrics, builds, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * The TFTP tree: iPXE binaries at the root, `images/<id>/{vmlinuz,initrd.img}` from the
 * cache, and `machines/<mac>/boot.ipxe` rendered by the HTTP service itself (so a client
 * that only speaks TFTP gets exactly the script an HTTP client would).
 */
function tftpTree(imagesDir: string, http: FastifyInstance, ipxeDir?: string) {
  const images = dirSource(imagesDir);
  return mountSources({
    '': ipxeSource(ipxeDir),
    'images/': async (path, client) => (TFTP_IMAGE_ARTIFACTS.has(path.split('/').pop() ?? '') ? images(path, client) : null),
    'machines/': generatedSource(async (path, client) => {
      const match = /^([0-9a-f]{2}(?:-[0-9a-f]{2}){5})\/boot\.ipxe$/i.exec(path);
      if (!match) return null;
      // As the TFTP client itself asked: the script's identity check sees its address.
      const response = await http.inject({ method: 'GET', url: `/machines/${match[1]}/boot.ipxe`, remoteAddress: client.address });
      return response.statusCode === 200 ? response.body : null;
    }),
  });
}

function recordDhcp(exchange: DhcpExchange, addressOwners: Map<string, string>, timeline: Timeline): void {
  if (!exchange.replyType) return;
  if (exchange.offered.ip) addressOwners.set(exchange.offered.ip, exchange.mac);
  // Only firmware and iPXE get a boot file. /init's own DHCP (full mode) is part of the boot
  // already under way; as a 'dhcp' phase it would open a new boot in the timeline.
  if (!exchange.offered.bootfile) return;
  timeline.record(exchange.mac, 'dhcp', {
    source: 'dhcp',
    detail: [exchange.messageType, '->', exchange.replyType, exchange.offered.ip, exchange.offered.bootfile].filter(Boolean).join(' '),
  });
}

function recordTftp(event: TransferEvent, addressOwners: Map<string, string>, timeline: Timeline, metrics: Metrics): void {
  // A UEFI tsize probe (aborted by the firmware on purpose) is not a transfer.
  if (event.outcome !== 'probe') {
    metrics.tftpTransfer(event.outcome === 'complete' || event.outcome === 'timeout' ? event.outcome : 'error', event.bytes);
  }
  const mac = addressOwners.get(event.client.address) ?? macFromPath(event.path);
  if (mac && event.outcome === 'complete') {
    timeline.record(mac, 'tftp', { source: 'tftp', detail: event.path, bytes: event.bytes, durationMs: event.durationMs });
  }
}

/** Each image id is an export; a superseded id stays readable while its file exists (and for connected clients, after). */
function nbdExport(cache: ImageCache, id: string): NbdExport | null {
  try {
    const path = cache.artifactPath(id, 'rootfs.squashfs');
    return { path, size: statSync(path).size };
  } catch {
    return null;
  }
}

/** An NBD root stays connected while the machine runs: its rootfs phase is the connection's open, and its close reports the bytes read. */
function recordNbd(event: NbdConnectionEvent, addressOwners: Map<string, string>, timeline: Timeline): void {
  if (event.event === 'refused' || !event.export) return;
  const mac = addressOwners.get(event.client.address.replace(/^::ffff:/, ''));
  if (!mac) return;
  const detail = event.event === 'open' ? `nbd export ${event.export} connected` : `nbd export ${event.export} closed after ${event.requests} reads (${event.reason ?? 'disconnect'})`;
  timeline.record(mac, 'rootfs', { source: 'nbd', detail, ...(event.event === 'close' ? { bytes: event.bytes } : {}), imageId: event.export });
}

function macFromPath(path: string): string | undefined {
  const match = /^machines\/([0-9a-f]{2}(?:-[0-9a-f]{2}){5})\//i.exec(path);
  return match ? match[1]!.toLowerCase().replace(/-/g, ':') : undefined;
}

