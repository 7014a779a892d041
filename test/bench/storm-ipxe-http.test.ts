import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ipxeHttp } from '../../bench/lib/storm-protocols.ts';

/** A server with iPXE's four files; counts the TCP connections it accepts and the requests on them. */
async function bootServer(status: Record<string, number> = {}): Promise<{ server: Server; base: string; connections: () => number; requests: string[] }> {
  const requests: string[] = [];
  let connections = 0;
  const server = createServer((req, res) => {
    requests.push(req.url!);
    const path = req.url!.split('?')[0]!;
    const code = status[path] ?? 200;
    const body: Record<string, string> = {
      '/boot.ipxe': '#!ipxe\nchain --replace http://HOST/machines/${mac:hexhyp}/boot.ipxe || goto failed\n',
      '/machines/52-54-00-88-00-01/boot.ipxe': '#!ipxe\nkernel --name vmlinuz http://HOST/images/x/vmlinuz?mac=52-54-00-88-00-01 initrd=initrd.img netboot.server=http://HOST console=ttyS0 || goto failed\ninitrd --name initrd.img http://HOST/images/x/initrd.img || goto failed\nboot\n',
      '/images/x/vmlinuz': 'k'.repeat(100_000),
      '/images/x/initrd.img': 'i'.repeat(50_000),
    };
    const text = (body[path] ?? 'not found').replaceAll('HOST', `127.0.0.1:${(server.address() as AddressInfo).port}`);
    res.writeHead(code === 200 && body[path] ? 200 : code === 200 ? 404 : code, { 'content-length': Buffer.byteLength(text) }).end(text);
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, connections: () => connections, requests };
}

let open: Server | null = null;
afterEach(async () => {
  await new Promise((resolve) => open?.close(resolve) ?? resolve(undefined));
  open = null;
});

const options = () => ({ localAddress: '127.0.0.1', jitter: () => 0, counters: { waits: 0, waitMs: 0, retries: 0 } });

describe('bench/storm: iPXE over HTTP', () => {
  it('fetches the boot file, the per-MAC script, the kernel and the initrd in order on one connection, as iPXE pools it', async () => {
    const { server, base, connections, requests } = await bootServer();
    open = server;
    const got = await ipxeHttp(`${base}/boot.ipxe`, '52:54:00:88:00:01', options());
    expect(requests).toEqual(['/boot.ipxe', '/machines/52-54-00-88-00-01/boot.ipxe', '/images/x/vmlinuz?mac=52-54-00-88-00-01', '/images/x/initrd.img']);
    expect(connections()).toBe(1);
    expect(got.kernelArgs).toEqual(['initrd=initrd.img', `netboot.server=${base}`, 'console=ttyS0']);
    for (const phase of ['script', 'kernel', 'initrd'] as const) expect(got.phases[phase]).toBeGreaterThanOrEqual(0);
  });

  it('names the phase that failed', async () => {
    const { server, base } = await bootServer({ '/images/x/initrd.img': 500 });
    open = server;
    const failed = await ipxeHttp(`${base}/boot.ipxe`, '52:54:00:88:00:01', options()).then(
      () => null,
      (err: Error & { phase?: string }) => err,
    );
    expect(failed?.phase).toBe('initrd');
    expect(failed?.message).toMatch(/initrd\.img: HTTP 500 \(3 tries\)/);
  }, 20_000); // iPXE's script tries the initrd 3 times, 2 s apart
});
