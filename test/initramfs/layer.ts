import tar from 'tar-stream';

/** The test's boot marker: run as netboot.init, it reports `up`, prints what the test checks, powers off. */
export const TEST_INIT = `#!/bin/sh
/run/netboot/busybox sh /run/netboot/report-up
echo "NETBOOT-TEST-UP hostname=$(cat /etc/hostname) secret=$(stat -c %u:%g:%a /home/alice/secret) root=$(grep ' / ' /proc/mounts)"
/run/netboot/busybox poweroff -f
`;

/**
 * A per-machine top layer as the HTTP engineer's server builds it: an uncompressed tar with
 * numeric owners. Holds /etc/hostname, the test init (`init`, default TEST_INIT), and a file owned by 1000:1000 mode 0600.
 */
export async function testLayerTar(hostname: string, init = TEST_INIT): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (chunk: unknown) => {
    chunks.push(chunk as Buffer);
  });
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  const entry = (header: Partial<tar.Header> & { name: string }, body = '') =>
    new Promise<void>((resolve, reject) => pack.entry({ uid: 0, gid: 0, mtime: new Date(0), ...header }, body, (err) => (err ? reject(err) : resolve())));
  await entry({ name: 'etc/', type: 'directory', mode: 0o755 });
  await entry({ name: 'etc/hostname', mode: 0o644 }, `${hostname}\n`);
  await entry({ name: 'etc/netboot-test-init', mode: 0o755 }, init);
  await entry({ name: 'home/', type: 'directory', mode: 0o755 });
  await entry({ name: 'home/alice/', type: 'directory', mode: 0o700, uid: 1000, gid: 1000 });
  await entry({ name: 'home/alice/secret', mode: 0o600, uid: 1000, gid: 1000 }, 'hunter2\n');
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}
