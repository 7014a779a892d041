import { connect, type Socket } from 'node:net';

/**
 * A deterministic HTTP fuzzer for the boot server: the same seed always gives the same requests.
 * Requests are written by hand on raw TCP sockets, so malformed request lines, methods and
 * headers reach the server exactly as generated (node:http and fetch would refuse to send them).
 * Every request says `Connection: close`, and its Content-Length always matches its body, so the
 * server never waits for bytes that will not come: any request without an answer is a finding.
 *
 * Reusable against any running server (e.g. a lab server in an e2e test): give `runFuzz` the base
 * URL and, optionally, real MACs, image ids, a signed layer URL and an event token to mutate.
 */

export interface FuzzRequest {
  method: string;
  /** The request target exactly as sent (not re-encoded). */
  target: string;
  headers: [string, string][];
  body: Buffer;
  /** Send the body as one chunk of `Transfer-Encoding: chunked` instead of with Content-Length. */
  chunked?: boolean;
}

export interface FuzzTargets {
  /** MACs the server knows (colon form). */
  macs?: string[];
  /** Built image ids. */
  imageIds?: string[];
  /** Image names in the config. */
  imageNames?: string[];
  /** Path and query of real signed layer URLs (`/machines/<mac>/layer?boot=…&sig=…`). */
  layerPaths?: string[];
  /** Real event tokens, per MAC (colon form). */
  eventTokens?: Record<string, string>;
  /** API bearer tokens (read or admin) to send now and then. */
  apiTokens?: string[];
}

export type Outcome = number | 'reset' | 'timeout' | 'no-status';

export interface FuzzResult {
  request: FuzzRequest;
  outcome: Outcome;
  /** The first bytes of the response (status line, headers, body start). */
  excerpt: string;
}

export interface FuzzReport {
  /** Outcome (status code, or reset/timeout/no-status) -> how many requests got it. */
  histogram: Record<string, number>;
  /** Every request answered with a 5xx. */
  serverErrors: FuzzResult[];
  /** Requests that got no answer in time, or a connection closed before a status line. */
  unanswered: FuzzResult[];
  total: number;
}

/** mulberry32: a tiny seeded PRNG, uniform in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Dice {
  constructor(readonly next: () => number) {}
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  hex(n: number): string {
    let s = '';
    for (let i = 0; i < n; i++) s += '0123456789abcdef'[this.int(16)];
    return s;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** Printable junk, safe in a request line (no spaces or controls). */
  token(n: number): string {
    const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&\'()*+,;=:@';
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet[this.int(alphabet.length)];
    return s;
  }
}

const pctEncode = (bytes: Buffer) => [...bytes].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('');

const METHODS = ['GET', 'GET', 'GET', 'GET', 'HEAD', 'HEAD', 'POST', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'CONNECT', 'PROPFIND', 'SEARCH', 'get', 'G3T', 'XYZZY', 'GET\x01', 'G T'];
const ARTIFACTS = ['vmlinuz', 'initrd.img', 'image-initrd.img', 'rootfs.squashfs', 'manifest.json', 'boot.ipxe', 'nope', '..', '%2e%2e', 'vmlinuz%00', 'VMLINUZ'];
const IPXE_NAMES = ['ipxe.efi', 'undionly.kpxe', 'snponly.efi', 'ipxe.pxe', '..%2f..%2fetc%2fpasswd', 'nope', '%00', ''];
const RANGES = [
  'bytes=0-99', 'bytes=-500', 'bytes=100-', 'bytes=0-0', 'bytes=5-1', 'bytes=0-0,5-10', 'bytes=0-1,2-3,4-5', 'bytes=99999999999-',
  `bytes=0-${'9'.repeat(400)}`, `bytes=-${'9'.repeat(400)}`, `bytes=${'9'.repeat(400)}-`, 'bytes=--', 'bytes=1-2-3', 'bytes=-0', 'bytes=',
  'items=0-1', 'bytes = 1 - 2', 'bytes=0x10-0x20', 'bytes=-1-', 'bytes=1e3-2e3', 'BYTES=0-1', 'bytes=\t0-1',
];
const EXPS = ['', '0', '-1', '1e3', 'NaN', 'Infinity', '99999999999', '999999999999', '9999999999999', `${'9'.repeat(300)}`, '1.5', '0x10', ' 1'];
const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/json; charset=utf-99', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/octet-stream', '', ';;;', 'application/json, text/plain', 'x/y; a="b'];
const PHASES = ['init', 'net', 'layer', 'rootfs', 'switch_root', 'up', 'failed', 'script', 'kernel', 'nope', ''];

export function generateRequests(seed: number, count: number, targets: FuzzTargets = {}): FuzzRequest[] {
  const d = new Dice(prng(seed));
  const macs = targets.macs?.length ? targets.macs : ['52:54:00:12:34:56'];
  const imageIds = targets.imageIds?.length ? targets.imageIds : ['0123456789abcdef'];
  const imageNames = targets.imageNames?.length ? targets.imageNames : ['demo'];
  const layerPaths = targets.layerPaths ?? [];
  const tokens = Object.entries(targets.eventTokens ?? {});
  const apiTokens = targets.apiTokens ?? [];

  const macSpelling = (): string => {
    const mac = d.pick(macs);
    switch (d.int(12)) {
      case 0: return mac;
      case 1: return mac.toUpperCase();
      case 2: return mac.replace(/:/g, '');
      case 3: return `${mac.replace(/:/g, '').slice(0, 4)}.${mac.replace(/:/g, '').slice(4, 8)}.${mac.replace(/:/g, '').slice(8)}`;
      case 4: return mac.slice(0, -1) + d.hex(1); // a neighbour: maybe unknown
      case 5: return d.hex(12);
      case 6: return `${d.hex(2)}-${d.hex(2)}-${d.hex(2)}-${d.hex(2)}-${d.hex(2)}`; // five groups
      case 7: return d.token(1 + d.int(30));
      case 8: return pctEncode(d.bytes(1 + d.int(12)));
      case 9: return d.pick(['..', '.', '%2e%2e', '%2F', '%', '%zz', '%E0%A4%A', '%00', '%C0%AF', 'a%20b']);
      case 10: return 'a'.repeat(d.pick([256, 4000, 9000]));
      default: return mac.replace(/:/g, '-');
    }
  };
  const imageId = (): string => {
    switch (d.int(8)) {
      case 0: return d.hex(16);
      case 1: return d.hex(d.int(40));
      case 2: return d.token(1 + d.int(20));
      case 3: return d.pick(['..', '%2e%2e', '%2e%2e%2f%2e%2e', 'nope', '', '%00', imageIds[0]!.toUpperCase()]);
      case 4: return pctEncode(d.bytes(1 + d.int(20)));
      default: return d.pick(imageIds);
    }
  };
  const value = (): string => {
    switch (d.int(7)) {
      case 0: return '';
      case 1: return d.hex(d.pick([1, 16, 63, 64, 65, 128]));
      case 2: return d.token(d.int(40));
      case 3: return pctEncode(d.bytes(d.int(16)));
      case 4: return 'x'.repeat(d.pick([1000, 5000]));
      case 5: return d.pick(['%zz', '%', '%00', '%ff%fe', '__proto__', 'constructor', '[]', '{}']);
      default: return d.hex(16);
    }
  };
  const query = (keys: string[]): string => {
    if (d.chance(0.2)) return '';
    const parts: string[] = [];
    for (const key of keys) {
      if (d.chance(0.15)) continue;
      parts.push(`${key}=${value()}`);
      if (d.chance(0.1)) parts.push(`${key}=${value()}`); // repeated: an array in the parsed query
    }
    if (d.chance(0.2)) parts.push(`${d.pick(['__proto__', 'constructor', 'a[b]', 'x', ''])}=${value()}`);
    if (d.chance(0.05)) parts.push('&&&', '=', '==');
    return `?${parts.join(d.chance(0.1) ? ';' : '&')}`;
  };
  const mutateLayerPath = (path: string): string => {
    const [base, qs = ''] = path.split('?') as [string, string?];
    const params = qs.split('&').map((kv) => kv.split('=') as [string, string]);
    const which = d.int(params.length + 3);
    if (which < params.length) {
      const [key, val] = params[which]!;
      switch (d.int(6)) {
        case 0: params[which] = [key, val.slice(0, -1) + d.hex(1)]; break;
        case 1: params[which] = [key, d.pick(EXPS)]; break;
        case 2: params[which] = [key, '']; break;
        case 3: params.splice(which, 1); break;
        case 4: params.push([key, val]); break; // the same key twice
        default: params[which] = [key, value()];
      }
    } else if (which === params.length) {
      const mac = base.split('/')[2]!;
      return `${base.replace(mac, macSpelling())}?${qs}`;
    } else if (which === params.length + 1) {
      return path; // the real one (a few deliveries, then 410/409)
    }
    return `${base}?${params.map((p) => p.join('=')).join('&')}`;
  };

  /** Set by path() when it chose a MAC whose real event token it has. */
  const paired: { token: string | null } = { token: null };
  const path = (): string => {
    const mac = () => macSpelling();
    switch (d.int(22)) {
      case 20: case 21: return `/images/${d.pick(imageIds)}/${d.pick(['vmlinuz', 'initrd.img', 'rootfs.squashfs', 'manifest.json'])}${d.chance(0.3) ? `?mac=${mac()}` : ''}`;
      case 0: return '/healthz' + (d.chance(0.2) ? query(['x']) : '');
      case 1: return '/metrics';
      case 2: return d.pick(['/boot.ipxe', '/boot.ipxe?x=1', '//boot.ipxe', '/./boot.ipxe', '/a/../boot.ipxe', '/%62oot.ipxe', '/boot.ipxe%00']);
      case 3: case 4: return `/machines/${mac()}/boot.ipxe${query(['image'])}`;
      case 5: case 6: return `/machines/${mac()}/layer${query(['boot', 'image', 'exp', 'sig'])}`;
      case 7: return `/machines/${mac()}/layer${d.chance(0.5) ? '' : `?image=${imageId()}`}`;
      case 8: case 9: {
        if (layerPaths.length > 0) return mutateLayerPath(d.pick(layerPaths));
        return `/machines/${mac()}/layer?boot=${d.hex(16)}&image=${imageId()}&exp=${d.pick(EXPS)}&sig=${d.hex(64)}`;
      }
      case 10: case 11: return `/images/${imageId()}/${d.pick(ARTIFACTS)}${d.chance(0.3) ? `?mac=${mac()}` : d.chance(0.1) ? `?mac=${mac()}&mac=${mac()}` : ''}`;
      case 12: return `/ipxe/${d.pick(IPXE_NAMES)}`;
      case 13: return d.pick(['/api/machines', '/api/images', `/api/machines/${mac()}`, `/api/images/${d.pick([...imageNames, 'nope', '..', '%2e'])}/rebuild`]);
      case 14: case 15: {
        if (tokens.length > 0 && d.chance(0.5)) {
          const [tokenMac, token] = d.pick(tokens);
          paired.token = token;
          return `/api/machines/${tokenMac.replace(/:/g, d.pick(['-', ':']))}/events`;
        }
        return `/api/machines/${mac()}/events${d.chance(0.1) ? query(['x']) : ''}`;
      }
      case 16: return '/' + Array.from({ length: 1 + d.int(6) }, () => value()).join('/');
      case 17: return '/' + 'a'.repeat(d.pick([100, 2000, 8000, 20000]));
      case 18: return d.pick(['*', 'http://127.0.0.1/healthz', 'healthz', '/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/images/../../etc/passwd', '/machines/..%2f..%2f/layer', '/?', '/#frag', '/%', '//', '/\\..\\']);
      default: return `/${pctEncode(d.bytes(1 + d.int(30)))}`;
    }
  };

  const goodEvent = (): Buffer => Buffer.from(JSON.stringify({ phase: d.pick(['init', 'net', 'layer', 'rootfs', 'up']), t: d.int(100) / 4 }));
  const eventBody = (): Buffer => {
    switch (d.int(12)) {
      case 0: return Buffer.alloc(0);
      case 1: return Buffer.from(JSON.stringify({ phase: d.pick(PHASES), t: d.pick([0, -1, 1e308, 12.5, 'x']), detail: d.chance(0.5) ? 'x'.repeat(d.pick([10, 600, 9000])) : undefined }));
      case 2: return Buffer.from(JSON.stringify({ phase: d.pick(PHASES), bytes: d.pick([-1, 0, 2 ** 60, 'NaN', null]), durationMs: d.pick([1, -5, 1e400, {}]) }));
      case 3: return Buffer.from(d.pick(['{', '{"phase":', 'null', '[]', '"x"', '0', '{"__proto__":{"x":1}}', '{"constructor":{"prototype":{"x":1}}}', 'true', '\u0000']));
      case 4: return Buffer.from('['.repeat(d.pick([100, 5000, 15000])) + ']'.repeat(d.chance(0.5) ? 0 : 100));
      case 5: return d.bytes(d.pick([1, 100, 5000]));
      case 6: return Buffer.alloc(d.pick([16 * 1024 + 1, 200_000, 1_100_000]), 0x61);
      case 7: return Buffer.from(JSON.stringify({ phase: 'up', detail: '\ud800' + 'é'.repeat(100), extra: { a: [1, 2, 3] } }));
      default: return Buffer.from(JSON.stringify({ phase: d.pick(PHASES), t: d.int(100) / 4, ...(d.chance(0.5) ? { detail: d.token(d.int(50)) } : {}) }));
    }
  };

  const out: FuzzRequest[] = [];
  for (let i = 0; i < count; i++) {
    paired.token = null;
    const target = path();
    // Mostly the methods the routes take, so that the requests get past the router often enough.
    const method = d.chance(0.55) ? d.pick(['GET', 'GET', 'HEAD', target.includes('/events') ? 'POST' : 'GET']) : d.pick(METHODS);
    const headers: [string, string][] = [['Host', d.chance(0.95) ? '127.0.0.1' : d.pick(['', 'x'.repeat(300), 'evil.example:99999'])]];
    if (d.chance(target.startsWith('/images/') ? 0.5 : 0.15)) headers.push(['Range', d.pick(RANGES)]);
    if (d.chance(0.05)) headers.push(['Range', d.pick(RANGES)]); // two Range headers
    if (d.chance(0.1)) headers.push(['If-None-Match', d.pick(['*', 'W/"x"', '"x", "y"', `"${d.hex(64)}"`, ',,,', '"', Array.from({ length: 500 }, () => '"a"').join(',')])]);
    if (d.chance(0.05)) headers.push(['If-Range', d.pick(['"x"', 'Wed, 21 Oct 2015 07:28:00 GMT', '', 'junk'])]);
    const pairedToken = paired.token as string | null; // set inside path()
    if (pairedToken !== null && d.chance(0.7)) {
      headers.push(['Authorization', d.chance(0.8) ? `Bearer ${pairedToken}` : `Bearer ${pairedToken.slice(0, -1)}${d.hex(1)}`]);
    } else if (d.chance(0.2)) {
      const tokenOf = tokens.length > 0 && d.chance(0.5) ? d.pick(tokens)[1] : null;
      headers.push(['Authorization', d.pick([
        tokenOf ? `Bearer ${tokenOf}` : 'Bearer x',
        tokenOf ? `Bearer ${tokenOf.slice(0, -1)}${d.hex(1)}` : `Bearer ${d.hex(16)}.${d.hex(64)}`,
        apiTokens.length > 0 ? `Bearer ${d.pick(apiTokens)}` : 'Bearer y',
        `Bearer ${d.hex(16)}.${d.hex(63)}`, `Bearer ${d.hex(80)}.${d.hex(64)}`, 'Bearer', 'Bearer  ', 'Basic dXNlcjpwYXNz', 'bearer x y', 'x'.repeat(3000),
      ])]);
    }
    if (d.chance(0.03)) headers.push([`X-${d.token(8).replace(/[^A-Za-z0-9-]/g, 'a')}`, 'v'.repeat(d.pick([8000, 20000]))]); // 20000: past the header limit
    if (d.chance(0.03)) headers.push(['X-Bad', `a\x01b`]);
    if (d.chance(0.02)) headers.push(['Bad Name', 'x']);
    if (d.chance(0.03)) for (let k = 0; k < 150; k++) headers.push([`X-H${k}`, 'y']);
    if (d.chance(0.03)) headers.push(['Expect', '100-continue']);

    let body: Buffer = Buffer.alloc(0);
    if (method !== 'GET' && method !== 'HEAD' ? d.chance(0.8) : d.chance(0.08)) {
      body = target.includes('/events') && d.chance(0.8) ? (pairedToken !== null && d.chance(0.5) ? goodEvent() : eventBody()) : d.pick([Buffer.from('{}'), Buffer.from('{"a":'), d.bytes(64), Buffer.alloc(0)]);
      if (d.chance(0.85)) headers.push(['Content-Type', d.chance(0.5) ? 'application/json' : d.pick(CONTENT_TYPES)]);
    }
    out.push({ method, target, headers, body, ...(body.length > 0 && d.chance(0.05) ? { chunked: true } : {}) });
  }
  return out;
}

/** The bytes of a request as it goes on the wire. */
export function encodeRequest(request: FuzzRequest): Buffer {
  const lines = [`${request.method} ${request.target} HTTP/1.1`, ...request.headers.map(([k, v]) => `${k}: ${v}`), 'Connection: close'];
  if (request.chunked) lines.push('Transfer-Encoding: chunked');
  else if (request.body.length > 0 || !['GET', 'HEAD'].includes(request.method)) lines.push(`Content-Length: ${request.body.length}`);
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
  if (!request.chunked) return Buffer.concat([head, request.body]);
  return Buffer.concat([head, Buffer.from(`${request.body.length.toString(16)}\r\n`), request.body, Buffer.from('\r\n0\r\n\r\n')]);
}

/** A short, printable description of a request for reports. */
export function describeRequest(request: FuzzRequest): string {
  const cut = (s: string, n: number) => (s.length > n ? `${s.slice(0, n)}…(${s.length})` : s);
  const headers = request.headers.map(([k, v]) => `${cut(k, 40)}: ${cut(JSON.stringify(v), 80)}`).join('; ');
  return `${JSON.stringify(request.method)} ${cut(request.target, 300)} [${headers}] body ${request.body.length}B${request.chunked ? ' chunked' : ''}: ${cut(JSON.stringify(request.body.subarray(0, 120).toString('latin1')), 140)}`;
}

/** The status of the final response (after any 1xx interim ones, e.g. 100 Continue), or null without one. */
function finalStatus(answer: string): number | null {
  let rest = answer;
  for (;;) {
    const line = /^HTTP\/1\.[01] (\d{3})/.exec(rest);
    if (!line) return null;
    const status = Number(line[1]);
    const end = rest.indexOf('\r\n\r\n');
    if (status >= 200 || end < 0) return status;
    rest = rest.slice(end + 4);
  }
}

/** Sends one request on its own connection; resolves with the status (or why there is none). Keeps at most `keep` bytes of the answer. */
export function sendRaw(host: string, port: number, request: FuzzRequest, timeoutMs: number, keep = 2048): Promise<{ outcome: Outcome; excerpt: string }> {
  return new Promise((resolve) => {
    let kept = Buffer.alloc(0);
    let settled = false;
    const socket: Socket = connect({ host, port });
    const finish = (why?: 'reset' | 'timeout') => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const excerpt = kept.toString('latin1');
      const status = finalStatus(excerpt);
      resolve({ outcome: why === 'timeout' ? 'timeout' : (status ?? why ?? 'no-status'), excerpt: excerpt.slice(0, 600) });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      if (kept.length < keep) kept = Buffer.concat([kept, chunk.subarray(0, keep - kept.length)]);
    });
    socket.on('end', () => finish());
    socket.on('close', () => finish());
    // The server may answer (413, 431) and close before it read everything we sent: a reset then is fine when a status came.
    socket.on('error', () => finish('reset'));
    socket.write(encodeRequest(request));
  });
}

export interface FuzzOptions {
  seed: number;
  count: number;
  /** Requests in flight at once. Default 16. */
  concurrency?: number;
  /** Per request. Default 15 s. */
  timeoutMs?: number;
  targets?: FuzzTargets;
  /** Called before each request is sent (e.g. to stage something between requests). */
  onRequest?: (index: number, request: FuzzRequest) => void;
}

/** Runs `count` generated requests against `baseUrl` (http://host:port) with bounded concurrency. */
export async function runFuzz(baseUrl: string, options: FuzzOptions): Promise<FuzzReport> {
  const url = new URL(baseUrl);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || 80);
  const requests = generateRequests(options.seed, options.count, options.targets);
  const histogram: Record<string, number> = {};
  const serverErrors: FuzzResult[] = [];
  const unanswered: FuzzResult[] = [];
  let next = 0;
  const worker = async () => {
    while (next < requests.length) {
      const index = next++;
      const request = requests[index]!;
      options.onRequest?.(index, request);
      const { outcome, excerpt } = await sendRaw(host, port, request, options.timeoutMs ?? 15_000);
      histogram[String(outcome)] = (histogram[String(outcome)] ?? 0) + 1;
      if (typeof outcome === 'number' && outcome >= 500) serverErrors.push({ request, outcome, excerpt });
      else if (typeof outcome !== 'number') unanswered.push({ request, outcome, excerpt });
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 16) }, worker));
  return { histogram, serverErrors, unanswered, total: requests.length };
}
