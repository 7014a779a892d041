import { afterEach, describe, expect, it } from 'vitest';
import { addImage } from './fixtures.ts';
import { assertLabelsResolve, baseYaml, harness, MAC, MAC_HYP, type Harness } from './setup.ts';

const S = 'http://127.0.0.1:8080';
let h: Harness;
afterEach(async () => h?.close());

function expectWellFormed(script: string) {
  expect(script.startsWith('#!ipxe\n')).toBe(true);
  expect(script).not.toContain('{{');
  expect(assertLabelsResolve(script)).toEqual([]);
}

describe('iPXE scripts', () => {
  it('generic script chains to the per-MAC script', async () => {
    h = await harness();
    const res = await h.app.inject('/boot.ipxe');
    expect(res.statusCode).toBe(200);
    expect(res.body).toContain(`chain --replace ${S}/machines/\${mac:hexhyp}/boot.ipxe`);
    expectWellFormed(res.body);
  });

  it('known MAC: kernel with the full netboot command line, named initrd, retries, then reboot', async () => {
    h = await harness();
    const image = addImage(h.store, 'demo');
    for (const spelling of [MAC_HYP, MAC, MAC.toUpperCase()]) {
      const res = await h.app.inject(`/machines/${spelling}/boot.ipxe`);
      expect(res.statusCode).toBe(200);
      const script = res.body;
      expectWellFormed(script);
      const kernelLines = script.split('\n').filter((l) => l.startsWith('kernel '));
      expect(kernelLines).toHaveLength(3); // first try + two retries
      const kernel = kernelLines[0]!;
      const layer = /netboot\.layer=(\S+)/.exec(kernel)![1]!;
      const token = /netboot\.token=(\S+)/.exec(kernel)![1]!;
      expect(kernel).toBe(
        `kernel --name vmlinuz ${S}/images/${image.id}/vmlinuz?mac=${MAC_HYP} initrd=initrd.img netboot.server=${S} netboot.mac=${MAC} ` +
          `netboot.image=${image.id} netboot.root=ram netboot.layer=${layer} netboot.token=${token} netboot.init=/sbin/init netboot.reboot=30 console=ttyS0 quiet || goto kernel_retry1`,
      );
      expect(layer).toMatch(new RegExp(`^${S}/machines/${MAC_HYP}/layer\\?boot=[0-9a-f]{16}&image=${image.id}&exp=\\d+&sig=[0-9a-f]{64}$`));
      // the event token is for the same boot as the layer URL
      expect(token).toBe(`${/boot=([0-9a-f]{16})/.exec(layer)![1]}.${token.split('.')[1]}`);
      expect(token).toMatch(/^[0-9a-f]{16}\.[0-9a-f]{64}$/);
      expect(script).toContain(`initrd --name initrd.img ${S}/images/${image.id}/initrd.img?mac=${MAC_HYP} || goto initrd_retry1`);
      expect(script).toMatch(/^boot \|\| goto failed$/m);
      expect(script).toMatch(/^sleep 5$/m);
      expect(script).toMatch(/:failed\n(echo .*\n)+sleep 30\nreboot \|\| exit\n$/);
    }
    // Three fetches of the script before any download: one boot, one timeline entry.
    expect(h.timeline.boots(MAC)).toHaveLength(1);
  });

  it('server.artifactBaseUrl: kernel, initrd and the rootfs base point at the cache, with one URL for every machine; layer and events stay here', async () => {
    h = await harness(baseYaml({ server: '  artifactBaseUrl: http://cache.lab:8081/netboot/' }));
    const image = addImage(h.store, 'demo');
    const script = (await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body;
    expectWellFormed(script);
    const kernel = script.split('\n').find((l) => l.startsWith('kernel '))!;
    expect(kernel).toMatch(new RegExp(`^kernel --name vmlinuz http://cache\\.lab:8081/netboot/images/${image.id}/vmlinuz initrd=initrd\\.img `));
    expect(kernel).toContain(' netboot.artifacts=http://cache.lab:8081/netboot ');
    expect(kernel).toContain(` netboot.server=${S} `);
    expect(kernel).toMatch(new RegExp(`netboot\\.layer=${S}/machines/${MAC_HYP}/layer\\?`));
    expect(script).toContain(`initrd --name initrd.img http://cache.lab:8081/netboot/images/${image.id}/initrd.img || goto initrd_retry1`);
    expect(script).not.toContain('?mac=');
  });

  it('server.artifactBaseUrl must be an http(s) URL without a query: the error names the field', async () => {
    const { parseConfig } = await import('../../server/config/load.ts');
    for (const bad of ['ftp://cache.lab/', 'http://cache.lab/x?y=1', 'cache.lab:8081']) {
      expect(() => parseConfig(baseYaml({ server: `  artifactBaseUrl: "${bad}"` }), '/virtual/netboot.yaml')).toThrow(/artifactBaseUrl[\s\S]*http:\/\/ or https:\/\//);
    }
  });

  it('an image with its own initramfs gets no netboot.* arguments', async () => {
    h = await harness(baseYaml({ images: '    initramfs: image\n    root: nbd' }));
    const image = addImage(h.store, 'demo');
    const script = (await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body;
    expectWellFormed(script);
    expect(script).toContain(`kernel --name vmlinuz ${S}/images/${image.id}/vmlinuz?mac=${MAC_HYP} initrd=initrd.img console=ttyS0 quiet ||`);
    expect(script).toContain(`initrd --name initrd.img ${S}/images/${image.id}/image-initrd.img?mac=${MAC_HYP} ||`);
    expect(script).not.toContain('netboot.');
  });

  it('an image not built yet: the script says so, waits and chains again', async () => {
    h = await harness();
    const script = (await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body;
    expectWellFormed(script);
    expect(script).toContain('image demo for demo1 is not built yet');
    expect(script).toMatch(/^sleep 10$/m);
    expect(script).toContain(`chain --replace ${S}/machines/${MAC_HYP}/boot.ipxe || goto wait`);
    expect(script).not.toMatch(/^kernel/m);
  });

  it('unknown MAC, policy menu: lists images with a timeout to the default, and each choice boots', async () => {
    h = await harness(baseYaml({ images: '  other:\n    source: docker:other:1', defaults: '  unknown: menu\n  menuTimeout: 7' }));
    const demo = addImage(h.store, 'demo');
    const script = (await h.app.inject('/machines/52-54-00-99-99-99/boot.ipxe')).body;
    expectWellFormed(script);
    expect(script).toMatch(/^menu /m);
    expect(script).toContain('item img_demo demo\n');
    expect(script).toContain('item img_other other (not built yet)\n');
    expect(script).toContain('choose --timeout 7000 --default img_demo target || goto local');
    expect(script).toContain(`:img_other\nchain --replace ${S}/machines/52-54-00-99-99-99/boot.ipxe?image=other || goto menu`);
    const chosen = (await h.app.inject('/machines/52-54-00-99-99-99/boot.ipxe?image=demo')).body;
    expectWellFormed(chosen);
    expect(chosen).toContain(`${S}/images/${demo.id}/vmlinuz?mac=52-54-00-99-99-99`);
    expect(chosen).toContain('node-525400999999');
  });

  it('unknown MAC, policy boot-default: boots the default image under a generated hostname', async () => {
    h = await harness(baseYaml({ defaults: '  unknown: boot-default' }));
    const demo = addImage(h.store, 'demo');
    const script = (await h.app.inject('/machines/52-54-00-99-99-98/boot.ipxe')).body;
    expectWellFormed(script);
    expect(script).toContain(`netboot.image=${demo.id}`);
    expect(script).toContain('node-525400999998 (52:54:00:99:99:98) booting demo');
  });

  it('unknown MAC, policy local: exit to the next boot device', async () => {
    h = await harness(baseYaml({ defaults: '  unknown: local' }));
    const script = (await h.app.inject('/machines/52-54-00-99-99-97/boot.ipxe')).body;
    expectWellFormed(script);
    expect(script).toMatch(/^exit$/m);
    expect(script).not.toMatch(/^(kernel|chain|menu)/m);
  });

  it('unknown MAC, policy deny: a refusal on the console, a pause, then exit', async () => {
    h = await harness(baseYaml({ defaults: '  unknown: deny' }));
    addImage(h.store, 'demo');
    const script = (await h.app.inject('/machines/52-54-00-99-99-96/boot.ipxe')).body;
    expectWellFormed(script);
    expect(script).toContain('REFUSED: machine 52:54:00:99:99:96 is not allowed to boot');
    expect(script).toMatch(/sleep 30\nexit\n$/);
    expect(script).not.toMatch(/^(kernel|chain)/m);
    // A known machine still boots under deny.
    expect((await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body).toMatch(/^kernel /m);
  });

  it('a config reload is seen by the next request', async () => {
    h = await harness();
    addImage(h.store, 'demo');
    expect((await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body).toContain('demo1 (');
    h.setConfig(baseYaml().replace('hostname: demo1', 'hostname: renamed'));
    expect((await h.app.inject(`/machines/${MAC_HYP}/boot.ipxe`)).body).toContain('renamed (');
  });

  it('not a MAC: 400, no crash', async () => {
    h = await harness();
    const res = await h.app.inject('/machines/not-a-mac/boot.ipxe');
    expect(res.statusCode).toBe(400);
    expect(res.body).toContain('is not a MAC address');
  });
});
