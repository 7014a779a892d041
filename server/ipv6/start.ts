import type { Logger } from '../log.ts';
import { RouterAdvertResponder, servingInterface } from './responder.ts';

export type { RouterAdvertResponder };

/**
 * server.ipv6RouterAdvert: auto, at `netboot serve`: the responder on the interface holding
 * server.address, or null (with the reason logged) when it cannot run. Never fatal: without it
 * machines boot as before, only slower on segments without an IPv6 router.
 */
export async function startRouterAdvertResponder(address: string, log: Logger): Promise<RouterAdvertResponder | null> {
  const iface = servingInterface(address);
  if (!iface) {
    log.info({ phase: 'ipv6', address }, `server.address ${address} is on no interface of this host: router solicitations are not answered`);
    return null;
  }
  try {
    const responder = await RouterAdvertResponder.start({ iface, log });
    log.info({ phase: 'ipv6', interface: iface.name }, 'answering router solicitations of booting machines (server.ipv6RouterAdvert: auto)');
    return responder;
  } catch (err) {
    log.warn({ phase: 'ipv6', interface: iface.name, err: (err as Error).message }, 'cannot answer router solicitations: iPXE will wait for IPv6 on segments without a router');
    return null;
  }
}
