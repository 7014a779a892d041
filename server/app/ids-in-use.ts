import type { Config } from '../config/types.ts';
import { localReadToken } from '../http/api.ts';
import { serverUrl } from '../http/context.ts';

/**
 * Image ids a running `netboot serve` (this config's server) is streaming over NBD right now:
 * removing one would take the root filesystem away from a machine the next time its client
 * reconnects. Null when no server answers (then nothing is known to be in use).
 */
export async function idsStreamedByServer(config: Config, timeoutMs = 2000): Promise<Set<string> | null> {
  let body: unknown;
  try {
    const token = localReadToken(config);
    const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
    const res = await fetch(`${serverUrl(config)}/api/images`, { headers, signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) return null;
    body = await res.json();
  } catch {
    return null;
  }
  const builds = (body as { builds?: { id?: unknown; nbdClients?: unknown }[] }).builds;
  if (!Array.isArray(builds)) return null;
  return new Set(builds.filter((b) => typeof b.id === 'string' && typeof b.nbdClients === 'number' && b.nbdClients > 0).map((b) => b.id as string));
}
