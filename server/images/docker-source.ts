import Dockerode from 'dockerode';
import { ImageError } from './errors.ts';
import { readTar, type TarEntry } from './tar-reader.ts';

/**
 * The `docker:REF` source: the local engine (DOCKER_HOST or /var/run/docker.sock), pulling
 * when the image is missing, flattened by create (never start) + export.
 */

export interface DockerImageInfo {
  /** What humans recognise: the repo digest when the image came from a registry, else the image Id. */
  digest: string;
  /** The image Id (config digest): changes whenever the content changes. */
  id: string;
  /** Uncompressed size as the engine reports it (progress total). */
  size: number;
}

export function defaultDocker(): Dockerode {
  // Dockerode reads DOCKER_HOST itself; without it, the standard socket.
  return process.env.DOCKER_HOST ? new Dockerode() : new Dockerode({ socketPath: '/var/run/docker.sock' });
}

function engineName(docker: Dockerode): string {
  const m = docker.modem as unknown as { socketPath?: string; host?: string; port?: number };
  return m.socketPath ? `unix://${m.socketPath}` : `${m.host}:${m.port}`;
}

function engineError(docker: Dockerode, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'EACCES' || code === 'ECONNRESET') {
    return new ImageError(`cannot reach the Docker engine at ${engineName(docker)} (${code}): is dockerd running? (set DOCKER_HOST to use another engine)`);
  }
  return err as Error;
}

async function inspect(docker: Dockerode, ref: string): Promise<Dockerode.ImageInspectInfo | null> {
  try {
    return await docker.getImage(ref).inspect();
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return null;
    throw engineError(docker, err);
  }
}

export interface PullProgress {
  bytes: number;
  totalBytes?: number;
}

/** Pulls `ref`, failing on any in-band `{"error": ...}` line (followProgress would not). */
export async function pullImage(docker: Dockerode, ref: string, onProgress?: (p: PullProgress) => void, signal?: AbortSignal): Promise<void> {
  let stream: NodeJS.ReadableStream;
  try {
    stream = (await docker.pull(ref, { abortSignal: signal })) as NodeJS.ReadableStream;
  } catch (err) {
    const e = engineError(docker, err);
    if (e instanceof ImageError) throw e;
    throw new ImageError(`docker:${ref}: pull failed: ${(err as Error).message}`);
  }
  const layers = new Map<string, { current: number; total: number }>();
  let buffered = '';
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    buffered += chunk.toString('utf8');
    let nl: number;
    while ((nl = buffered.indexOf('\n')) !== -1) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      let event: { error?: string; errorDetail?: { message?: string }; id?: string; progressDetail?: { current?: number; total?: number } };
      try {
        event = JSON.parse(line);
      } catch {
        continue;
      }
      if (event.error || event.errorDetail) {
        throw new ImageError(`docker:${ref}: pull failed: ${event.error ?? event.errorDetail?.message}`);
      }
      if (event.id && event.progressDetail?.total) {
        layers.set(event.id, { current: event.progressDetail.current ?? 0, total: event.progressDetail.total });
        let bytes = 0;
        let totalBytes = 0;
        for (const l of layers.values()) {
          bytes += l.current;
          totalBytes += l.total;
        }
        onProgress?.({ bytes, totalBytes });
      }
    }
  }
}

export async function resolveDockerImage(
  docker: Dockerode,
  ref: string,
  options: { pull?: boolean; onPullProgress?: (p: PullProgress) => void; signal?: AbortSignal } = {},
): Promise<DockerImageInfo> {
  let info = await inspect(docker, ref);
  if (!info && options.pull !== false) {
    await pullImage(docker, ref, options.onPullProgress, options.signal);
    info = await inspect(docker, ref);
  }
  if (!info) throw new ImageError(`docker:${ref}: no such image in the engine at ${engineName(docker)}, and it could not be pulled`);
  const repoDigest = info.RepoDigests?.[0]?.split('@')[1];
  return { digest: repoDigest ?? info.Id, id: info.Id, size: info.Size };
}

/** Paths that `docker export` adds for the container and that must not reach a booted root. */
const CONTAINER_ARTEFACTS = new Set([
  // systemd (and others) take /.dockerenv to mean "running in a container" and skip units.
  '.dockerenv',
]);

/**
 * The image's flattened root as tar entries, via a created (never started) container.
 * The container is removed whatever happens, including when the consumer stops early.
 */
export async function* exportDockerImage(docker: Dockerode, imageId: string, options: { onBytes?: (n: number) => void } = {}): AsyncGenerator<TarEntry> {
  let container: Dockerode.Container;
  try {
    container = await docker.createContainer({
      Image: imageId,
      Cmd: ['/netboot-export-never-runs'],
      Entrypoint: [],
      NetworkDisabled: true,
      HostConfig: { NetworkMode: 'none' },
      Labels: { 'netboot.export': '1' },
    });
  } catch (err) {
    throw engineError(docker, err);
  }
  try {
    const stream = (await container.export()) as unknown as NodeJS.ReadableStream & { destroy?: () => void };
    let bytes = 0;
    async function* counted(): AsyncGenerator<Buffer> {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        options.onBytes?.(bytes);
        yield chunk;
      }
    }
    try {
      for await (const entry of readTar(counted())) {
        if (CONTAINER_ARTEFACTS.has(entry.header.path)) continue;
        yield entry;
      }
    } finally {
      stream.destroy?.();
    }
  } finally {
    await container.remove({ force: true, v: true }).catch(() => {});
  }
}
