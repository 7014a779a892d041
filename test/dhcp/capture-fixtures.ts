/**
 * One-off: records the first DHCPDISCOVER of three real PXE clients as golden fixtures.
 *
 *   node --import tsx test/dhcp/capture-fixtures.ts [ipxe-bios|ovmf-pxe|ovmf-http ...]
 *
 * Each client runs in QEMU (TCG) on a tap of a private network namespace; tshark listens on
 * the namespace's bridge for one packet to UDP port 67 and prints its UDP payload as hex,
 * which is written to test/dhcp/fixtures/<name>-discover.bin. QEMU is killed as soon as the
 * packet is in; the namespace is deleted afterwards (also on failure). No DHCP server runs:
 * only the client's first DISCOVER is wanted.
 */
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createSegment, stopChild } from '../../server/lab/netns.ts';
import { waitForOutput } from '../../server/lab/services.ts';

interface Client {
  mac: string;
  /** SMBIOS system UUID, sent by the firmware as option 97. */
  uuid: string;
  /** QEMU arguments besides accel/memory/netdev. */
  args(work: string): Promise<string[]>;
}

const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';

async function ovmf(work: string): Promise<string[]> {
  const vars = join(work, 'OVMF_VARS.fd');
  await copyFile('/usr/share/OVMF/OVMF_VARS_4M.fd', vars);
  return ['-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`, '-drive', `if=pflash,format=raw,file=${vars}`];
}

const CLIENTS: Record<string, Client> = {
  // SeaBIOS + QEMU's virtio-net iPXE ROM: arch 0, user class "iPXE".
  'ipxe-bios': {
    mac: '52:54:00:00:d0:01',
    uuid: '5ad1b0a7-0001-4c6e-9e2b-0d0c0b0a0901',
    args: async () => ['-boot', 'n', '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:00:d0:01'],
  },
  // OVMF's own UEFI PXE client (NIC ROM disabled): arch 7, vendor class PXEClient.
  'ovmf-pxe': {
    mac: '52:54:00:00:d0:02',
    uuid: '5ad1b0a7-0002-4c6e-9e2b-0d0c0b0a0902',
    args: async (work) => [...(await ovmf(work)), '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:00:d0:02,romfile=,bootindex=1'],
  },
  // OVMF UEFI HTTP Boot (PXE entries disabled): arch 16, vendor class HTTPClient.
  'ovmf-http': {
    mac: '52:54:00:00:d0:03',
    uuid: '5ad1b0a7-0003-4c6e-9e2b-0d0c0b0a0903',
    args: async (work) => [
      ...(await ovmf(work)),
      '-fw_cfg', 'name=opt/org.tianocore/IPv4PXESupport,string=n',
      '-fw_cfg', 'name=opt/org.tianocore/IPv6PXESupport,string=n',
      '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:00:d0:03,romfile=,bootindex=1',
    ],
  },
};

async function capture(name: string, client: Client): Promise<Buffer> {
  const work = await mkdtemp(join(tmpdir(), `dhcp-capture-${name}-`));
  const segment = await createSegment();
  try {
    const tap = await segment.addTap();
    const tshark = segment.spawn('tshark', ['-i', segment.bridge, '-l', '-n', '-f', 'udp dst port 67', '-c', '1', '-T', 'fields', '-e', 'udp.payload']);
    await waitForOutput(tshark, /Capturing on/, 20_000);
    const hex = new Promise<string>((resolve, reject) => {
      createInterface({ input: tshark.stdout! }).once('line', (line) => resolve(line.trim()));
      tshark.once('exit', (code) => reject(new Error(`tshark exited with ${code} before a packet`)));
    });
    const qemu = segment.spawn('qemu-system-x86_64', [
      '-accel', 'tcg', '-m', '256', '-nographic', '-no-reboot', '-uuid', client.uuid,
      '-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`,
      ...(await client.args(work)),
    ], { stdio: ['ignore', 'ignore', 'ignore'] });
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${name}: no DISCOVER within 90 s`)), 90_000).unref());
    const payload = Buffer.from((await Promise.race([hex, timeout])).replace(/:/g, ''), 'hex');
    await stopChild(qemu, 1000);
    return payload;
  } finally {
    await segment.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

const wanted = process.argv.slice(2).length > 0 ? process.argv.slice(2) : Object.keys(CLIENTS);
for (const name of wanted) {
  const client = CLIENTS[name];
  if (!client) throw new Error(`unknown client ${name}; known: ${Object.keys(CLIENTS).join(', ')}`);
  const payload = await capture(name, client);
  const file = join(import.meta.dirname, 'fixtures', `${name}-discover.bin`);
  await writeFile(file, payload);
  process.stdout.write(`${name}: ${payload.length} bytes -> ${file}\n`);
}
