import { describe, expect, it } from 'vitest';
import { bootingMachine, planBoot } from '../../server/boot/plan.ts';
import { parseConfig } from '../../server/config/load.ts';

const images = `images:
  lab:
    source: docker:lab:latest
  ci:
    source: oci-archive:/srv/ci.tar
`;
const base = `${images}machines:\n  52:54:00:00:00:01: { hostname: known, image: ci }\n  52:54:00:00:00:02: {}\n`;

describe('planBoot: what a MAC gets, for DHCP, TFTP and HTTP alike', () => {
  it('gives known machines their entry and image', () => {
    const config = parseConfig(`${base}defaults: { image: lab }\n`, '/x/netboot.yaml');
    expect(planBoot(config, '52:54:00:00:00:01')).toMatchObject({ kind: 'boot', machine: { hostname: 'known', image: 'ci', known: true }, image: { name: 'ci' } });
  });

  it.each([
    ['boot-default', { kind: 'boot', machine: { image: 'lab', known: false, hostname: 'node-525400000099' }, image: { name: 'lab' } }],
    ['menu', { kind: 'menu', timeout: 10, machine: { image: 'lab', hostname: 'node-525400000099' } }],
    ['local', { kind: 'local' }],
    ['deny', { kind: 'deny' }],
  ])('applies the unknown-MAC policy %s', (policy, expected) => {
    const config = parseConfig(`${base}defaults: { image: lab, unknown: ${policy} }\n`, '/x/netboot.yaml');
    expect(planBoot(config, '52:54:00:00:00:99')).toMatchObject(expected);
  });

  it('one hostname rule: a configured machine without a hostname and an unknown MAC booted by policy', () => {
    const config = parseConfig(`${base}defaults: { image: lab, unknown: boot-default }\n`, '/x/netboot.yaml');
    expect(bootingMachine(planBoot(config, '52:54:00:00:00:02'))?.hostname).toBe('node-525400000002');
    expect(bootingMachine(planBoot(config, '52:54:00:00:00:03'))?.hostname).toBe('node-525400000003');
  });

  it('menu: a chosen image boots, an unknown name shows the menu again; known machines ignore the choice', () => {
    const config = parseConfig(`${base}defaults: { image: lab, unknown: menu }\n`, '/x/netboot.yaml');
    expect(planBoot(config, '52:54:00:00:00:99', 'ci')).toMatchObject({ kind: 'boot', machine: { image: 'ci', known: false }, image: { name: 'ci' } });
    expect(planBoot(config, '52:54:00:00:00:99', 'nope')).toMatchObject({ kind: 'menu' });
    expect(planBoot(config, '52:54:00:00:00:01', 'lab')).toMatchObject({ kind: 'boot', image: { name: 'ci' } });
  });

  it('boot-default without any image refuses instead of inventing one', () => {
    const config = parseConfig(`defaults: { unknown: boot-default }\n`, '/x/netboot.yaml');
    expect(planBoot(config, '52:54:00:00:00:99')).toEqual({ kind: 'deny' });
  });
});
