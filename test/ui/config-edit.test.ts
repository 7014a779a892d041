import { describe, expect, it } from 'vitest';
import { ConfigEditError, withMachine } from '../../server/http/ui/config-edit.ts';

const FILE = '/nonexistent/netboot.yaml';
const BASE = `# top comment
server:
  address: 10.88.60.1 # the lab's address

images:
  demo: { source: "docker:netboot/demo:latest" }   # flow style stays

machines:
  # first rack
  52:54:00:60:10:01:
    hostname: a1
  "52-54-00-60-10-02":   # quoted hyphen form
    hostname: a2
    image: demo
# trailing comment
`;
const entry = { mac: '52:54:00:60:10:03', hostname: 'a3', image: 'demo' };

describe('withMachine (yaml Document API)', () => {
  it('appends the machine and keeps every comment and the other entries as written', () => {
    const next = withMachine(BASE, FILE, entry);
    for (const line of ['# top comment', '# the lab\'s address', '# flow style stays', '  # first rack', '"52-54-00-60-10-02":', '# quoted hyphen form', '# trailing comment', 'demo: { source: "docker:netboot/demo:latest" }']) {
      expect(next).toContain(line);
    }
    expect(next).toContain('  52:54:00:60:10:03:\n    hostname: a3\n    image: demo\n');
    expect(next.indexOf('52:54:00:60:10:03')).toBeGreaterThan(next.indexOf('a2'));
  });

  it('creates the machines map when there is none, or fills an empty one', () => {
    const none = withMachine('images:\n  demo:\n    source: docker:x/y:1\n', FILE, entry);
    expect(none).toContain('machines:\n  52:54:00:60:10:03:\n    hostname: a3');
    const empty = withMachine('images:\n  demo:\n    source: docker:x/y:1\nmachines:\n', FILE, entry);
    expect(empty).toContain('52:54:00:60:10:03');
    const flow = withMachine('images:\n  demo:\n    source: docker:x/y:1\nmachines: {}\n', FILE, entry);
    expect(flow).toContain('52:54:00:60:10:03');
  });

  it('refuses a MAC already present in any spelling, a taken hostname, an unknown image, a broken file', () => {
    expect(() => withMachine(BASE, FILE, { ...entry, mac: '52:54:00:60:10:02' })).toThrow(/already in the config/);
    expect(() => withMachine(BASE, FILE, { ...entry, mac: '5254.0060.1001' })).toThrow(ConfigEditError);
    expect(() => withMachine(BASE, FILE, { ...entry, hostname: 'a1' })).toThrow(ConfigEditError);
    expect(() => withMachine(BASE, FILE, { ...entry, image: 'nope' })).toThrow(ConfigEditError);
    expect(() => withMachine(BASE, FILE, { ...entry, mac: 'zz' })).toThrow(/not a MAC/);
    expect(() => withMachine('machines: [\n', FILE, entry)).toThrow(/does not parse/);
  });
});
