import type { DhcpSightings } from '../boot/dhcp-sightings.ts';
import type { IdentityEvidence } from '../boot/identity.ts';
import type { NeighbourLookup } from '../boot/neighbours.ts';
import type { Config } from '../config/types.ts';
import type { Metrics } from '../events/metrics.ts';
import type { Timeline } from '../events/timeline.ts';
import type { LayerService } from '../layers/service.ts';
import type { Logger } from '../log.ts';
import type { ArtifactStore } from './artifact-store.ts';
import type { IpxeTemplates } from './ipxe.ts';

export interface HttpDeps {
  /** The config in force (e.g. `() => store.current`), read on every request so reloads just work. */
  getConfig: () => Config;
  artifacts: ArtifactStore;
  timeline: Timeline;
  metrics: Metrics;
  log: Logger;
  stateDir: string;
  /** Full-DHCP mode: the address leased to a MAC (identity evidence). */
  leaseLookup?: (mac: string) => string | undefined;
  /** DHCP packets seen per MAC (proxy-mode identity evidence); the DHCP server feeds the same object. */
  dhcpSightings?: DhcpSightings;
  /** The peer's MAC from the neighbour table (default: this namespace's /proc/net/arp). */
  neighbours?: NeighbourLookup;
  /** Starts a rebuild of the named image (POST /api/images/<name>/rebuild). */
  rebuild?: (imageName: string) => unknown;
  /** NBD clients connected to an image id's export right now (GET /api/images; `netboot gc` keeps those ids). */
  nbdClients?: (id: string) => number;
  /** Lifetime of the signed layer URL written into the kernel command line. Default 900 s. */
  layerTtlSeconds?: number;
  templatesDir?: string;
  /** Where the iPXE binaries are (default: Debian's /usr/lib/ipxe). */
  ipxeDir?: string;
  now?: () => number;
}

/** What every route module gets. */
export interface HttpContext extends HttpDeps {
  templates: IpxeTemplates;
  layers: LayerService;
  now: () => number;
  layerTtlSeconds: number;
  identity: IdentityEvidence;
}

export function serverUrl(config: Config): string {
  return `http://${config.server.address}:${config.server.httpPort}`;
}

/** Per-request fields for the one log line each request gets. */
export interface RequestNote {
  mac?: string;
  /** The peer proved to be `mac` (server/http/identity.ts): only then may its address stand for that machine. */
  evidenced?: boolean;
  phase?: string;
  /** Set when the request deserves a warning (e.g. a refused second layer fetch). */
  warning?: string;
  error?: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    note: RequestNote;
  }
}
