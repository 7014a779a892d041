/** The NBD export service: see server.ts for the loop, session.ts for one connection's rules, codec.ts for the wire format. */
export { NbdServer } from './server.ts';
export { NbdThread, type NbdThreadOptions, type NbdReadBatch } from './thread.ts';
export type { NbdClientAddress, NbdConnectionEvent, NbdExport, NbdReadEvent, NbdServerOptions, NbdThrottleEvent } from './server.ts';
export { EXPORT_TRANSMISSION_FLAGS, BLOCK_SIZE } from './codec.ts';
export { NbdSession, defaultSessionLimits, type SessionLimits } from './session.ts';
