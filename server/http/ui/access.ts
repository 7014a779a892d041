import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { matchesAny } from '../api.ts';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../../config/types.ts';

/**
 * Who may see the status page, with the same tokens and rules as /api (server/http/api.ts):
 * `read` = server.api.readToken, the host token, or anyone when server.api.public; `admin` =
 * server.api.adminToken (or the older server.apiToken). A browser logs in once with a token and
 * gets a session cookie (HttpOnly, SameSite=Strict) that names the role and is signed over a hash
 * of the token it was made from: changing or removing that token in the config ends the session
 * at the next request. Scripts keep sending `Authorization: Bearer`.
 */
export type Role = 'read' | 'admin';

export interface Viewer {
  role: Role | null;
  /** How the role was established; cookie sessions need a CSRF token on every mutation. */
  via: 'bearer' | 'cookie' | 'public' | null;
  /** The session cookie's value (for the CSRF token); null when not a cookie session. */
  session: string | null;
  /** A bearer token that matched nothing (answer 403, as the API does). */
  badToken: boolean;
}

export const SESSION_COOKIE = 'netboot_session';
const SESSION_SECONDS = 12 * 3600;

export class UiAccess {
  readonly #key: Buffer;

  constructor(
    installKey: Buffer,
    private readonly hostToken: string,
    private readonly now: () => number = Date.now,
  ) {
    this.#key = createHmac('sha256', installKey).update('status-page-session').digest();
  }

  tokens(config: Config): { admin: string[]; read: string[] } {
    const api = config.server.api;
    return {
      admin: [api.adminToken, config.server.apiToken].filter((t): t is string => t !== undefined),
      read: [api.readToken, this.hostToken].filter((t): t is string => t !== undefined),
    };
  }

  /** The role a token grants, or null. */
  roleOf(config: Config, token: string): Role | null {
    const { admin, read } = this.tokens(config);
    if (matchesAny(token, admin)) return 'admin';
    if (matchesAny(token, read)) return 'read';
    return null;
  }

  viewer(config: Config, request: FastifyRequest): Viewer {
    const given = bearer(request);
    if (given !== null) {
      const role = this.roleOf(config, given);
      return { role, via: role ? 'bearer' : null, session: null, badToken: role === null };
    }
    const session = cookie(request, SESSION_COOKIE);
    const role = session ? this.verifySession(config, session) : null;
    if (role) return { role, via: 'cookie', session: session!, badToken: false };
    if (config.server.api.public) return { role: 'read', via: 'public', session: null, badToken: false };
    return { role: null, via: null, session: null, badToken: false };
  }

  /** A session cookie value for a token that grants `role`. */
  session(role: Role, token: string): string {
    const exp = Math.floor(this.now() / 1000) + SESSION_SECONDS;
    const nonce = randomBytes(8).toString('hex');
    return `${role}.${exp}.${nonce}.${this.#sign(role, exp, nonce, token)}`;
  }

  verifySession(config: Config, value: string): Role | null {
    const match = /^(read|admin)\.(\d{1,12})\.([0-9a-f]{16})\.([0-9a-f]{64})$/.exec(value);
    if (!match) return null;
    const role = match[1] as Role;
    const exp = Number(match[2]);
    if (exp * 1000 <= this.now()) return null;
    const nonce = match[3]!;
    const given = Buffer.from(match[4]!, 'hex');
    const tokens = this.tokens(config)[role];
    let ok = false;
    for (const token of tokens) ok = timingSafeEqual(given, Buffer.from(this.#sign(role, exp, nonce, token), 'hex')) || ok;
    return ok ? role : null;
  }

  /** The CSRF token of a cookie session: forms carry it, mutations check it. */
  csrf(session: string): string {
    return createHmac('sha256', this.#key).update(`csrf\0${session}`).digest('hex');
  }

  checkCsrf(viewer: Viewer, given: unknown): boolean {
    if (viewer.via === 'bearer') return true; // a bearer token is never sent by a browser on its own
    if (viewer.via !== 'cookie' || typeof given !== 'string' || !/^[0-9a-f]{64}$/.test(given)) return false;
    return timingSafeEqual(Buffer.from(given, 'hex'), Buffer.from(this.csrf(viewer.session!), 'hex'));
  }

  #sign(role: Role, exp: number, nonce: string, token: string): string {
    const tokenHash = createHash('sha256').update(token).digest('hex');
    return createHmac('sha256', this.#key).update(`${role}\0${exp}\0${nonce}\0${tokenHash}`).digest('hex');
  }
}

/**
 * A mutation from another site is refused before anything else: browsers send Origin on every
 * cross-origin POST (and Sec-Fetch-Site), so a form on another page cannot even try a CSRF token.
 */
export function sameOrigin(request: FastifyRequest): boolean {
  const site = request.headers['sec-fetch-site'];
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') return false;
  const origin = request.headers.origin;
  if (origin === undefined) return true;
  return origin === `http://${request.headers.host ?? ''}` || origin === `https://${request.headers.host ?? ''}`;
}

export function sessionCookie(value: string, maxAge = SESSION_SECONDS): string {
  return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAge}`;
}

export function bearer(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  return match ? match[1]! : null;
}

export function cookie(request: FastifyRequest, name: string): string | null {
  const header = request.headers.cookie;
  if (!header) return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}


/** Refuses a request without the role; returns true when it may go on. */
export function allow(viewer: Viewer, need: Role, config: Config, reply: FastifyReply, html: boolean): boolean {
  if (viewer.badToken) {
    void reply.code(403).send({ error: 'wrong token' });
    return false;
  }
  if (viewer.role === 'admin' || (need === 'read' && viewer.role === 'read')) return true;
  if (need === 'admin' && config.server.api.adminToken === undefined && config.server.apiToken === undefined) {
    void reply.code(404).type('text/plain').send('mutations are disabled: set server.api.adminToken in the config');
    return false;
  }
  if (viewer.role === 'read') {
    void reply.code(403).type('text/plain').send('this session may only read; adding machines and rebuilding need the admin token');
    return false;
  }
  if (html) void reply.code(303).header('location', '/login').send();
  else void reply.code(401).header('WWW-Authenticate', 'Bearer').send({ error: 'log in at /login or send Authorization: Bearer <token>' });
  return false;
}
