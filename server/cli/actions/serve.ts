import { startNetboot } from '../../app/netboot.ts';
import { ConfigStore } from '../../config/watch.ts';
import { raiseControlPlanePriority } from '../../threads/priority.ts';
import { EXIT, type CommonOptions } from '../common.ts';
import { loadConfigOrExit, loggerFor } from '../setup.ts';

export async function runServe(options: CommonOptions): Promise<void> {
  const log = loggerFor(options);
  const store = new ConfigStore(loadConfigOrExit(options.config), log);
  // Before any service thread starts: TFTP's inherits the raised priority, NBD's is started below it.
  const priority = await raiseControlPlanePriority(store.current.server.controlPlanePriority, (err) =>
    log.warn({ phase: 'serve', err: err.message }, 'control plane back at the bulk priority: raising it again failed'),
  );
  if (priority.raised) log.info({ phase: 'serve', ...priority }, 'DHCP, scripts, events and TFTP run above NBD, sendfile and image-build tools');
  else log.info({ phase: 'serve', nice: priority.nice, reason: priority.reason }, 'control plane at the same priority as bulk work');
  let netboot;
  try {
    netboot = await startNetboot({ store, log });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    const hint =
      e.code === 'EADDRINUSE' ? ` — another server uses ${e.address}:${e.port}; stop it or change the port in the config`
      : e.code === 'EACCES' ? ' — ports below 1024 (DHCP 67, TFTP 69) need root'
      : e.code === 'EADDRNOTAVAIL' ? ' — server.bind is not an address of this host'
      : '';
    log.fatal({ err: e.message, phase: 'serve' }, `cannot start${hint}`);
    process.exit(EXIT.failure);
  }
  store.watch();
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ phase: 'serve', signal }, 'stopping');
    store.close();
    await netboot.stop();
    process.exit(EXIT.ok);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
}
