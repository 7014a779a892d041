/**
 * Our initramfs NBD client (native/nbd-client/netboot-nbd.c): compiled static, negotiates with
 * our server and with Debian's nbd-server (the handshake half; the kernel half — netlink connect,
 * reconnect after a server restart — runs in the e2e suite's VMs: this host has no nbd module).
 */
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeCpio, type CpioEntry } from '../../server/initramfs/cpio.ts';
import { compileNbdClient, nbdClientFiles, nbdClientFingerprint, NBD_CLIENT_PATH, NBD_CLIENT_SOURCE, type InitramfsFile } from '../../server/initramfs/nbd-client.ts';
import { startServer, type ServerFixture } from './helpers.ts';
import { waitUntil } from '../lab/wait-until.ts';

const run = promisify(execFile);

function check(binary: string, port: number, name: string, host = '127.0.0.1', env: NodeJS.ProcessEnv = process.env) {
  return run(binary, ['--check', host, String(port), name], { timeout: 20_000, env }).then(
    ({ stdout }) => ({ code: 0, stdout, stderr: '' }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
  );
}

describe('netboot-nbd, our initramfs NBD client', () => {
  let files: InitramfsFile[];
  let binary: string;
  let fx: ServerFixture;
  let root: string;

  beforeAll(async () => {
    binary = await compileNbdClient();
    files = await nbdClientFiles();
    fx = await startServer({ 'image-a': 8192, 'image-b': 65536 + 4096 });
    root = await mkdtemp(join(tmpdir(), 'nbd-client-root-'));
  }, 120_000);
  afterAll(async () => {
    await fx?.close();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('is one static ELF executable at bin/netboot-nbd, far smaller than nbd-client with its libraries', async () => {
    expect(files.map((f) => f.path)).toEqual([NBD_CLIENT_PATH]);
    const [file] = files;
    expect(file!.data.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    expect(file!.mode & 0o111).not.toBe(0);
    expect(file!.data.length).toBeLessThan(2_000_000);
    const { stdout } = await run('file', ['-b', binary]).catch(() => ({ stdout: '' }));
    if (stdout) expect(stdout).toMatch(/statically linked/);
  });

  it('compiles once per source version (the fingerprint follows the source)', async () => {
    expect(await compileNbdClient()).toBe(binary);
    const copy = join(root, 'copy.c');
    await writeFile(copy, `${await readFile(NBD_CLIENT_SOURCE, 'utf8')}\n/* changed */\n`);
    expect(await nbdClientFingerprint(copy)).not.toBe(await nbdClientFingerprint());
  });

  it('negotiates each export with NBD_OPT_GO and reads its size and read-only flag', async () => {
    const a = await check(binary, fx.port, 'image-a');
    expect(a.code).toBe(0);
    const m = /^image-a: (\d+) bytes, flags 0x([0-9a-f]{4})$/m.exec(a.stdout);
    expect(Number(m?.[1])).toBe(8192);
    expect(parseInt(m![2]!, 16) & 0x3).toBe(0x3); // HAS_FLAGS | READ_ONLY
    expect((await check(binary, fx.port, 'image-b')).stdout).toMatch(/^image-b: 69632 bytes/m);
  });

  it('names the reason when an export is unknown, the server is absent or the address is not an IP', async () => {
    const unknown = await check(binary, fx.port, 'no-such-image');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/export 'no-such-image' refused \(error \d+/);
    const closed = await check(binary, 1, 'image-a');
    expect(closed.code).toBe(1);
    expect(closed.stderr).toMatch(/connect 127\.0\.0\.1:1: Connection refused/);
    const name = await check(binary, fx.port, 'image-a', 'server.lab');
    expect(name.stderr).toMatch(/'server\.lab' is not an IP address/);
  });

  it('gives up on a server that accepts the connection and never speaks, naming the wait', async () => {
    // What a client saw from a storm-overloaded nbd-server (bench/storm): established on its side, never greeted.
    const held: Socket[] = [];
    const silent = createServer((socket) => held.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = silent.address() as AddressInfo;
      const result = await check(binary, port, 'image-a', '127.0.0.1', { ...process.env, NETBOOT_NBD_HANDSHAKE_TIMEOUT_S: '1' });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/handshake with 127\.0\.0\.1:\d+: no answer within 1 s/);
      expect(held).toHaveLength(1);
    } finally {
      for (const socket of held) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("negotiates with Debian's nbd-server too", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'nbd-server-'));
    let server: ChildProcess | undefined;
    try {
      const image = join(dir, 'disk.img');
      await writeFile(image, Buffer.alloc(1 << 20, 7));
      const port = await freePort();
      const config = join(dir, 'config');
      await writeFile(config, `[generic]\nport = ${port}\nlistenaddr = 127.0.0.1\n[disk]\nexportname = ${image}\nreadonly = true\n`);
      server = spawn('nbd-server', ['-C', config, '-d'], { stdio: 'ignore' });
      // nbd-server forks into the background: ask until it listens (the wait only guards against a hang).
      let result = await check(binary, port, 'disk');
      await waitUntil(async () => result.code === 0 || (result = await check(binary, port, 'disk')).code === 0, `nbd-server listening on ${port}`, 60_000, 100);
      expect(result.stdout).toMatch(/^disk: 1048576 bytes/m);
    } finally {
      server?.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('runs from an otherwise empty root written by our cpio writer (no libraries needed)', async () => {
    const entries: CpioEntry[] = [{ type: 'dir', path: 'bin' }, ...files.map((f): CpioEntry => ({ type: 'file', path: f.path, data: f.data, mode: f.mode }))];
    const archive = `${root}.cpio`;
    await writeFile(archive, writeCpio(entries));
    try {
      await run('sh', ['-c', `cd "${root}" && cpio -idm --quiet < "${archive}"`]);
    } finally {
      await rm(archive, { force: true });
    }
    const { stdout } = await run('chroot', [root, '/bin/netboot-nbd', '--check', '127.0.0.1', String(fx.port), 'image-a'], { timeout: 20_000 });
    expect(stdout).toMatch(/^image-a: 8192 bytes/m);
  });
});

/** A TCP port nothing listens on right now (the kernel picks it; no guessing). */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}
