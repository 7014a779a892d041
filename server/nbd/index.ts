/** The NBD export service: see server.ts for the loop, codec.ts for the wire format. */
export { NbdServer } from './server.ts';
export type { NbdClientAddress, NbdConnectionEvent, NbdExport, NbdReadEvent, NbdServerOptions } from './server.ts';
export { EXPORT_TRANSMISSION_FLAGS, BLOCK_SIZE } from './codec.ts';
