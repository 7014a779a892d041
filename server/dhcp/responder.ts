import type { Config } from '../config/types.ts';
import { clientKind, decideBoot, type BootDecision, type ClientFacts } from './boot-decision.ts';
import {
  BOOTREPLY,
  BOOTREQUEST,
  BROADCAST_FLAG,
  IPXE_NO_PROXYDHCP,
  MessageType,
  Opt,
  PXE_BOOT_FROM_FILE,
  PXE_DISCOVERY_CONTROL,
  clientArch,
  clientMac,
  encodeSubOptions,
  getOption,
  ipOption,
  messageType,
  messageTypeName,
  option,
  requestedIp,
  serverId,
  textOption,
  u32Option,
  u8Option,
  userClass,
  vendorClass,
  type DhcpMessage,
  type DhcpOption,
} from './codec.ts';
import { sameSubnet, unknownLeaseCap, type LeaseStore, type PoolSpec, type UnknownLimit } from './leases.ts';

/**
 * The DHCP logic without sockets: one decoded request in, at most one reply (with where to
 * send it) and one exchange record out. server.ts does the I/O.
 */

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;
export const PXE_PORT = 4011;
/** How long a declined address stays out of the pool. */
export const DECLINE_HOLD_SECONDS = 600;

export type DhcpMode = 'proxy' | 'full';

/** One handled packet, for logs, metrics and the boot timeline. */
export interface DhcpExchange {
  mac: string;
  /** Option 93's first entry; null when the client sent none. */
  arch: number | null;
  /** Option 60 as sent (e.g. PXEClient:Arch:00007:UNDI:003016), when the client sent one. */
  vendorClass?: string;
  mode: DhcpMode;
  /** What the client sent: DISCOVER, REQUEST, ... */
  messageType: string;
  /** What we answered (OFFER, ACK, NAK), or null when we stayed silent. */
  replyType: string | null;
  /** 67 or 4011 */
  port: number;
  offered: { ip?: string; bootfile?: string };
  /** Why there was no reply (or no boot file in a full-mode reply). */
  ignoredReason?: string;
  detail?: string;
}

export interface Destination {
  address: string;
  port: number;
}

export interface Outcome {
  reply: { message: DhcpMessage; to: Destination } | null;
  exchange: DhcpExchange | null;
}

export interface RequestContext {
  config: Config;
  /** Port the packet arrived on. */
  port: number;
  from: Destination;
  /** Full mode only. */
  leases: LeaseStore | null;
  /**
   * The server's neighbour (ARP) entry for the address a RELEASE or DECLINE names (server.ts
   * looks it up first; undefined mac: no entry). Both messages are unauthenticated, and anyone
   * on the segment can send one with a machine's MAC, from its address: the entry is evidence
   * the sender cannot write without also spoofing ARP.
   */
  neighbour?: { ip: string; mac: string | undefined };
}

const ZERO = '0.0.0.0';
const BROADCAST = '255.255.255.255';

export function respond(request: DhcpMessage, ctx: RequestContext): Outcome {
  const { config } = ctx;
  const mode = config.server.dhcp.mode;
  if (mode === 'off' || request.op !== BOOTREQUEST) return { reply: null, exchange: null };
  const mac = clientMac(request);
  if (!mac) return { reply: null, exchange: null };
  const type = messageType(request);
  const arches = clientArch(request);
  const facts: ClientFacts = { mac, arch: arches[0], userClass: userClass(request), vendorClass: vendorClass(request) };
  const exchange: DhcpExchange = {
    mac,
    arch: facts.arch ?? null,
    ...(facts.vendorClass !== undefined ? { vendorClass: facts.vendorClass.slice(0, 128) } : {}),
    mode,
    messageType: messageTypeName(type),
    replyType: null,
    port: ctx.port,
    offered: {},
  };
  const silent = (reason: string, detail?: string): Outcome => ({
    reply: null,
    exchange: { ...exchange, ignoredReason: reason, ...(detail ? { detail } : {}) },
  });
  if (type === undefined) return silent('no-message-type', 'BOOTP request without option 53');

  const decision = decideBoot(facts, config);
  if (decision.kind === 'ignore' && decision.reason === 'unknown-mac-deny') return silent(decision.reason, decision.detail);

  const out = mode === 'proxy' || ctx.port === PXE_PORT ? proxy(request, type, decision, ctx) : full(request, type, facts, decision, ctx);
  if (!out.reply) return silent(out.reason ?? (decision.kind === 'ignore' ? decision.reason : 'not-for-us'), out.detail ?? (decision.kind === 'ignore' ? decision.detail : undefined));
  const reply = out.reply;
  echoClientOptions(request, reply.message);
  const replyType = messageTypeName(messageType(reply.message));
  const offered: DhcpExchange['offered'] = {};
  if (reply.message.yiaddr !== ZERO) offered.ip = reply.message.yiaddr;
  if (decision.kind === 'boot' && replyType !== 'NAK') offered.bootfile = decision.bootfile;
  const record: DhcpExchange = { ...exchange, replyType, offered };
  // A plain DHCP client getting a lease without a boot file is the normal case, not worth a reason.
  if (decision.kind === 'ignore' && decision.reason !== 'not-a-boot-client' && replyType !== 'NAK') {
    record.ignoredReason = decision.reason;
    record.detail = decision.detail;
  }
  if (replyType === 'NAK') {
    if (out.reason) record.ignoredReason = out.reason;
    if (out.detail) record.detail = out.detail;
  }
  return { reply, exchange: record };
}

/**
 * RFC 6842: the client identifier (61) comes back in every reply; RFC 3046: relay agent
 * information (82) comes back too, last, so the relay can forward the reply.
 */
function echoClientOptions(request: DhcpMessage, reply: DhcpMessage): void {
  const clientIdentifier = getOption(request, Opt.CLIENT_ID);
  if (clientIdentifier) reply.options.push(option(Opt.CLIENT_ID, clientIdentifier));
  const relayInfo = getOption(request, Opt.RELAY_AGENT);
  if (relayInfo && request.giaddr !== ZERO) reply.options.push(option(Opt.RELAY_AGENT, relayInfo));
}

interface Answer {
  reply: Outcome['reply'];
  reason?: string;
  detail?: string;
}

// ---- proxy ------------------------------------------------------------------------------

/**
 * ProxyDHCP (PXE spec 2.1): only PXE/HTTP-boot clients, never an address. On 67 an OFFER to
 * a DISCOVER; on 4011 an ACK straight back to the sender.
 */
function proxy(request: DhcpMessage, type: number, decision: BootDecision, ctx: RequestContext): Answer {
  if (decision.kind !== 'boot') return { reply: null };
  const vendor = vendorClass(request) ?? '';
  if (!vendor.startsWith('PXEClient') && !vendor.startsWith('HTTPClient')) {
    return { reply: null, reason: 'not-a-pxe-client', detail: 'proxy mode answers only vendor class PXEClient/HTTPClient' };
  }
  const kind = decision.httpClientEcho ? 'http' : 'pxe';
  const me = ctx.config.server.address;
  let replyType: number;
  let to: Destination;
  if (ctx.port === PXE_PORT) {
    if (type !== MessageType.REQUEST && type !== MessageType.INFORM) return { reply: null, reason: 'not-a-request' };
    replyType = MessageType.ACK;
    to = ctx.from;
  } else if (type === MessageType.DISCOVER) {
    replyType = MessageType.OFFER;
    to = replyDestination(request, false);
  } else {
    // A REQUEST on 67 is the address server's, even when it names our address (the lab's DHCP
    // server may run on this very host): an ACK without yiaddr from us could win the race and
    // leave the client without an address. PXE clients ask us on 4011.
    return { reply: null, reason: 'for-address-server', detail: 'proxy mode answers only DISCOVER on 67 and REQUEST/INFORM on 4011' };
  }
  const options: DhcpOption[] = [u8Option(Opt.MESSAGE_TYPE, replyType), ipOption(Opt.SERVER_ID, me)];
  options.push(...bootOptions(request, decision, kind));
  const message = baseReply(request, ZERO, decision, me);
  message.options = options;
  return { reply: { message, to } };
}

/** Option 60 echo, PXE vendor options (boot the named file, no menu/discovery), UUID echo. */
function bootOptions(request: DhcpMessage, decision: Extract<BootDecision, { kind: 'boot' }>, kind: 'pxe' | 'http' | 'ipxe'): DhcpOption[] {
  const options: DhcpOption[] = [];
  if (decision.httpClientEcho || kind === 'http') {
    options.push(textOption(Opt.VENDOR_CLASS, 'HTTPClient'));
  } else if (kind === 'pxe') {
    options.push(textOption(Opt.VENDOR_CLASS, 'PXEClient'));
    options.push(option(Opt.VENDOR, encodeSubOptions([u8Option(PXE_DISCOVERY_CONTROL, PXE_BOOT_FROM_FILE)])));
  }
  // PXE spec: replies to a client that sent its UUID carry it back.
  const uuid = getOption(request, Opt.CLIENT_UUID);
  if (uuid && (kind === 'pxe' || kind === 'http')) options.push(option(Opt.CLIENT_UUID, uuid));
  options.push(textOption(Opt.BOOTFILE, decision.bootfile));
  return options;
}

function baseReply(request: DhcpMessage, yiaddr: string, decision: BootDecision, me: string): DhcpMessage {
  return {
    op: BOOTREPLY,
    htype: request.htype,
    hlen: request.hlen,
    hops: 0,
    xid: request.xid,
    secs: 0,
    flags: request.flags & BROADCAST_FLAG,
    ciaddr: request.ciaddr,
    yiaddr,
    siaddr: decision.kind === 'boot' ? decision.nextServer : me,
    giaddr: request.giaddr,
    chaddr: Buffer.from(request.chaddr),
    sname: '',
    file: decision.kind === 'boot' && decision.bootfile.length <= 127 ? decision.bootfile : '',
    options: [],
  };
}

/**
 * RFC 2131 4.1: to the relay (port 67) when giaddr is set; to ciaddr when the client has an
 * address; else broadcast. (A client without the broadcast flag would like a unicast to its
 * new address, but that needs an ARP entry Node cannot make: broadcast, which every client accepts.)
 */
function replyDestination(request: DhcpMessage, nak: boolean): Destination {
  if (request.giaddr !== ZERO) return { address: request.giaddr, port: DHCP_SERVER_PORT };
  if (!nak && request.ciaddr !== ZERO) return { address: request.ciaddr, port: DHCP_CLIENT_PORT };
  return { address: BROADCAST, port: DHCP_CLIENT_PORT };
}

// ---- full -------------------------------------------------------------------------------

/**
 * The pool without the server's address and every reservation, built once per config (a
 * config is replaced, never changed, on reload): the lease store indexes its pool by this
 * object, and a per-packet walk of every machine would cost O(machines) per packet. A MAC's
 * own reservation being in `excluded` does not matter: a MAC with a reservation gets only it.
 */
const poolSpecs = new WeakMap<Config, PoolSpec>();

function poolSpec(config: Config, mac: string): { spec: PoolSpec; reserved: string | undefined } | null {
  const pool = config.server.dhcp.pool;
  if (!pool) return null;
  let spec = poolSpecs.get(config);
  if (!spec || spec.start !== pool.start || spec.end !== pool.end) {
    const excluded = new Set<string>([config.server.address]);
    for (const machine of config.machines.values()) if (machine.ip) excluded.add(machine.ip);
    spec = { start: pool.start, end: pool.end, excluded };
    poolSpecs.set(config, spec);
  }
  return { spec, reserved: config.machines.get(mac)?.ip };
}

/**
 * Full DHCP, RFC 2131 4.3 with the client's state read from the REQUEST (4.3.2):
 * - SELECTING (server id, option 50): only the address we OFFERed to that MAC in that
 *   transaction (xid); anything else naming us is NAKed.
 * - INIT-REBOOT (option 50, no server id, no ciaddr) and RENEWING/REBINDING (ciaddr, no server
 *   id; unicast and broadcast look alike to us): only the address already bound to that MAC (or
 *   its reservation); another address is NAKed; a MAC we have no record of gets silence.
 * So a REQUEST never binds an address that was not offered to that MAC. Addresses go only to
 * MACs the boot policy serves (unknown ones under boot-default/menu), unknown ones within
 * server.dhcp.pool.maxUnknownLeases and for unknownLeaseSeconds.
 */
function full(request: DhcpMessage, type: number, facts: ClientFacts, decision: BootDecision, ctx: RequestContext): Answer {
  const { config, leases } = ctx;
  const pool = config.server.dhcp.pool;
  const spec = poolSpec(config, facts.mac);
  if (!pool || !spec || !leases) return { reply: null, reason: 'no-pool', detail: 'full mode without server.dhcp.pool' };
  const me = config.server.address;
  const mac = facts.mac;
  const asked = serverId(request);
  if (decision.kind === 'ignore' && decision.reason === 'unknown-mac-local') {
    return { reply: null, reason: decision.reason, detail: `${decision.detail}; no address either` };
  }
  // One pool, one subnet: a relay on another network would hand out addresses that do not work there.
  if (request.giaddr !== ZERO && !sameSubnet(request.giaddr, pool.start, pool.netmask)) {
    return { reply: null, reason: 'relay-other-subnet', detail: `relay ${request.giaddr} is not on the pool's network (${pool.start}/${pool.netmask})` };
  }
  const known = config.machines.has(mac);
  const limit: UnknownLimit = { isKnown: (m) => config.machines.has(m), max: unknownLeaseCap(pool) };
  const leaseSeconds = known ? pool.leaseSeconds : Math.min(pool.unknownLeaseSeconds, pool.leaseSeconds);

  const reply = (replyType: number, yiaddr: string, to: Destination, withLease: boolean): Answer => {
    const message = baseReply(request, yiaddr, decision, me);
    const options: DhcpOption[] = [u8Option(Opt.MESSAGE_TYPE, replyType), ipOption(Opt.SERVER_ID, me)];
    if (withLease) {
      options.push(u32Option(Opt.LEASE_TIME, leaseSeconds));
      options.push(u32Option(Opt.RENEWAL_TIME, Math.floor(leaseSeconds / 2)));
      options.push(u32Option(Opt.REBINDING_TIME, Math.floor((leaseSeconds * 7) / 8)));
    }
    options.push(ipOption(Opt.SUBNET_MASK, pool.netmask));
    if (pool.router) options.push(ipOption(Opt.ROUTER, pool.router));
    if (pool.dns.length > 0) options.push(ipOption(Opt.DNS, ...pool.dns));
    if (pool.domain) options.push(textOption(Opt.DOMAIN, pool.domain));
    const hostname = decision.kind === 'boot' ? decision.machine?.hostname : config.machines.get(mac)?.hostname;
    if (hostname) options.push(textOption(Opt.HOSTNAME, hostname));
    if (decision.kind === 'boot') {
      const kind = clientKind(facts);
      options.push(...bootOptions(request, decision, kind === 'plain' ? 'ipxe' : kind));
      // We are the only DHCP server: iPXE need not wait for ProxyDHCP offers.
      if (kind === 'ipxe') options.push(option(Opt.IPXE, encodeSubOptions([u8Option(IPXE_NO_PROXYDHCP, 1)])));
    }
    message.options = options;
    return { reply: { message, to } };
  };
  const nak = (reason: string, detail: string): Answer => {
    const message = baseReply(request, ZERO, { kind: 'ignore', reason: 'not-a-boot-client', detail }, me);
    message.siaddr = ZERO;
    message.file = '';
    message.ciaddr = ZERO;
    message.options = [u8Option(Opt.MESSAGE_TYPE, MessageType.NAK), ipOption(Opt.SERVER_ID, me), textOption(Opt.MESSAGE, detail)];
    if (request.giaddr !== ZERO) message.flags |= BROADCAST_FLAG;
    return { reply: { message, to: replyDestination(request, true) }, reason, detail };
  };
  const silent = (reason: string, detail: string): Answer => ({ reply: null, reason, detail });

  /** ACK for an address the REQUEST has earned (offered, or already the client's): bind or extend it. */
  const ack = (ip: string, state: string): Answer => {
    if (!sameSubnet(ip, me, pool.netmask)) return nak('wrong-network', `${state}: ${ip} is not on this network`);
    if (!leases.withinUnknownCap(mac, limit)) {
      return nak('unknown-lease-cap', `${state}: unknown MACs already hold ${limit.max} addresses (server.dhcp.pool.maxUnknownLeases)`);
    }
    if (!leases.bind(mac, ip, leaseSeconds, spec.spec, spec.reserved)) return nak('unavailable', `${state}: ${ip} is not available to ${mac}`);
    return reply(MessageType.ACK, ip, replyDestination(request, false), true);
  };
  /** INIT-REBOOT / RENEWING / REBINDING: only the address already the client's. */
  const confirm = (ip: string, state: string): Answer => {
    const record = leases.record(mac);
    const mine = spec.reserved ?? record?.ip;
    if (mine === undefined) return silent('no-record', `${state} for ${ip}: no lease on record for ${mac} (RFC 2131 4.3.2: stay silent)`);
    if (!sameSubnet(ip, me, pool.netmask)) return nak('wrong-network', `${state}: ${ip} is not on this network`);
    if (ip !== mine) return nak('wrong-address', `${state}: ${ip} is not the address of ${mac} (${mine})`);
    return ack(ip, state);
  };

  switch (type) {
    case MessageType.DISCOVER: {
      const offered = leases.offer(mac, request.xid, spec.spec, spec.reserved, requestedIp(request), limit);
      if (offered.ip === null) {
        return offered.reason === 'unknown-lease-cap'
          ? silent(offered.reason, `unknown MACs already hold ${limit.max} addresses (server.dhcp.pool.maxUnknownLeases)`)
          : silent(offered.reason, `no free address in ${pool.start}-${pool.end}`);
      }
      return reply(MessageType.OFFER, offered.ip, replyDestination(request, false), true);
    }
    case MessageType.REQUEST: {
      const requested = requestedIp(request);
      const ciaddr = request.ciaddr !== ZERO ? request.ciaddr : undefined;
      if (asked !== undefined && asked !== me) {
        leases.withdrawOffer(mac, request.xid);
        return silent('other-server', `REQUEST names server ${asked}`);
      }
      if (asked === me && requested !== undefined) {
        const match = leases.matchOffer(mac, requested, request.xid);
        if (!match.ok) {
          const why = {
            'no-offer': `no offer to ${mac} is open`,
            'other-address': `${mac} was offered ${match.offered}, not ${requested}`,
            'other-xid': `xid 0x${request.xid.toString(16)} is not the transaction ${requested} was offered in`,
          }[match.why];
          return nak('no-matching-offer', `SELECTING: ${why}`);
        }
        return ack(requested, 'SELECTING');
      }
      // Renewing clients send ciaddr; some also name us (RFC 2131 says they must not): same rule.
      if (ciaddr !== undefined) return confirm(ciaddr, 'RENEWING/REBINDING');
      if (requested !== undefined) return confirm(requested, 'INIT-REBOOT');
      return asked === me ? nak('no-address', 'REQUEST without a requested address') : silent('no-address', 'REQUEST without server id, requested address or ciaddr');
    }
    case MessageType.DECLINE: {
      const ip = requestedIp(request);
      if (asked !== me || !ip) return silent('decline-not-ours', 'DECLINE without our server id or a requested address');
      // A client declines an address someone *else* answers ARP for; the server's own entry naming the client says otherwise.
      if (ctx.neighbour?.ip === ip && ctx.neighbour.mac === mac) return silent('decline-forged', `${ip} is at ${mac} itself in the neighbour table: a DECLINE in its name is forged`);
      if (!leases.decline(mac, ip, DECLINE_HOLD_SECONDS)) return silent('decline-unknown', `${ip} is not leased or offered to ${mac}`);
      return silent('declined', `${ip} declined; kept out of the pool for ${DECLINE_HOLD_SECONDS} s`);
    }
    case MessageType.RELEASE: {
      if (asked !== undefined && asked !== me) return silent('other-server', `RELEASE names server ${asked}`);
      // A client releases by unicast from the address it gives back (RFC 2131 4.4.6), from the MAC the server's ARP entry knows there.
      const sender = ctx.from.address;
      if (sender !== request.ciaddr && !(request.giaddr !== ZERO && sender === request.giaddr)) return silent('release-forged', `RELEASE of ${request.ciaddr} for ${mac} sent from ${sender}, not from that address`);
      const holder = ctx.neighbour?.ip === request.ciaddr ? ctx.neighbour.mac : undefined;
      if (holder !== undefined && holder !== mac) return silent('release-forged', `${request.ciaddr} is at ${holder} in the neighbour table, not ${mac}: a RELEASE in its name is forged`);
      if (!leases.release(mac, request.ciaddr)) return silent('release-unknown', `${request.ciaddr} is not leased to ${mac}`);
      return silent('released', `${request.ciaddr} released`);
    }
    case MessageType.INFORM: {
      // The client has its address already: configuration only, no yiaddr, no lease time.
      const to = request.giaddr !== ZERO ? { address: request.giaddr, port: DHCP_SERVER_PORT } : request.ciaddr !== ZERO ? { address: request.ciaddr, port: DHCP_CLIENT_PORT } : ctx.from;
      return reply(MessageType.ACK, ZERO, to, false);
    }
    default:
      return { reply: null, reason: 'unexpected-type' };
  }
}
