export { DhcpServer, type DhcpServerOptions, type DhcpExchange } from './server.ts';
export { decideBoot, clientKind, Arch, type BootDecision, type ClientFacts, type IgnoreReason, type ClientKind } from './boot-decision.ts';
export { LeaseStore, type Lease, type PoolSpec } from './leases.ts';
export { respond, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, PXE_PORT, type DhcpMode, type Outcome, type RequestContext } from './responder.ts';
export * from './codec.ts';
