import type Dockerode from 'dockerode';
import type { Logger } from '../log.ts';

export interface TagChange {
  ref: string;
  /** The image Id the tag now names. */
  id: string;
  /** Repo digest when the image came from a registry, else the Id. */
  digest: string;
  /** The Id it named before (null when the tag did not exist). */
  previousId: string | null;
}

/**
 * Reports when a `docker:` tag moves to another image (a rebuild, a pull, a `docker tag`).
 * Engine image events trigger an immediate check; a slow poll covers a missed or broken
 * event stream. The first look only records the current image. Returns `stop()`.
 */
export function watchDockerTag(
  options: { docker: Dockerode; ref: string; log: Logger; pollMs?: number },
  onChange: (change: TagChange) => void,
): () => void {
  const { docker, ref, log } = options;
  let stopped = false;
  let known: string | null | undefined; // undefined = not looked yet
  let checking: Promise<void> | null = null;
  let again = false;

  const look = async () => {
    let info: Dockerode.ImageInspectInfo | null = null;
    try {
      info = await docker.getImage(ref).inspect();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 404) {
        log.debug({ ref, err: (err as Error).message }, 'docker tag check failed');
        return;
      }
    }
    const id = info?.Id ?? null;
    if (known === undefined) {
      known = id;
      return;
    }
    if (id && id !== known && !stopped) {
      const previousId = known;
      known = id;
      log.info({ ref, id, previousId }, 'docker tag moved');
      onChange({ ref, id, digest: info?.RepoDigests?.[0]?.split('@')[1] ?? id, previousId });
    } else if (!id) {
      known = null;
    }
  };
  const check = () => {
    if (stopped) return;
    if (checking) {
      again = true;
      return;
    }
    checking = look().finally(() => {
      checking = null;
      if (again) {
        again = false;
        check();
      }
    });
  };

  check();
  const timer = setInterval(check, options.pollMs ?? 30_000);
  timer.unref();

  let events: NodeJS.ReadableStream | null = null;
  docker
    .getEvents({ filters: { type: ['image'] } })
    .then((stream) => {
      if (stopped) {
        (stream as unknown as { destroy(): void }).destroy();
        return;
      }
      events = stream;
      stream.on('data', () => check());
      stream.on('error', () => {});
    })
    .catch((err: Error) => log.debug({ ref, err: err.message }, 'docker events unavailable; polling'));

  return () => {
    stopped = true;
    clearInterval(timer);
    (events as unknown as { destroy?(): void } | null)?.destroy?.();
  };
}
